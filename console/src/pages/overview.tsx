// Overview: ingest rate and lag, the logs and their newest signed checkpoints, alerts over
// time by severity and by rule, and detection and delivery health — from /metrics,
// /v1/checkpoints/latest and SQL over the alerts table.
import { useRef } from 'preact/hooks';
import { getJson, getText, query, type Row } from '../api';
import { Chart } from '../chart';
import { parseMetrics, series, total, type Sample } from '../metrics';
import { usePoll } from '../poll';

interface Latest {
  checkpoints: { log: string; tree_size: number; note: string }[];
}

const SEVERITIES = ['critical', 'high', 'medium', 'low', 'info'];

export function Overview() {
  const history = useRef<{ t: number; decoded: number; rate: number | null }[]>([]);
  const metrics = usePoll(async () => {
    const s = parseMetrics(await getText('/metrics'));
    const t = Date.now() / 1000;
    const decoded = total(s, 'vigil_records_total');
    const h = history.current;
    const prev = h[h.length - 1];
    const rate = prev && t > prev.t && decoded >= prev.decoded ? (decoded - prev.decoded) / (t - prev.t) : null;
    h.push({ t, decoded, rate });
    if (h.length > 120) h.shift();
    return s;
  }, 5000);
  const cps = usePoll(() => getJson<Latest>('/v1/checkpoints/latest'), 10000);
  const alerts = usePoll(async () => {
    const [byTime, byRule] = await Promise.all([
      query(
        "SELECT CAST(date_bin(INTERVAL '1 minute', detected_at) AS BIGINT) / 1000000000 AS t, severity, count(*) AS n FROM alerts GROUP BY 1, 2 ORDER BY 1",
      ),
      query('SELECT rule_id, severity, count(*) AS n, max(detected_at) AS newest FROM alerts GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 50'),
    ]);
    return { byTime, byRule };
  }, 15000);

  const s: Sample[] = metrics.data ?? [];
  const h = history.current.filter((x) => x.rate !== null);
  const rate = h.length ? h[h.length - 1].rate! : null;
  return (
    <div class="overview">
      <h2>Overview</h2>
      {metrics.error && <p class="error">metrics: {metrics.error}</p>}
      <section class="tiles">
        <Tile id="tile-rate" label="records/s" value={rate === null ? '…' : rate.toFixed(1)} />
        <Tile label="records stored" value={String(total(s, 'vigil_rows_stored_total'))} />
        <Tile label="partitions" value={String(total(s, 'vigil_partitions_assigned'))} />
        <Tile label="alerts raised" value={String(total(s, 'vigil_alerts_fired_total'))} />
        <Tile label="late events" value={String(total(s, 'vigil_detect_log_late_total'))} warn={total(s, 'vigil_detect_log_late_total') > 0} />
        <Tile label="skewed events" value={String(total(s, 'vigil_detect_log_skewed_total'))} warn={total(s, 'vigil_detect_log_skewed_total') > 0} />
        <Tile label="outbox depth" value={String(total(s, 'vigil_outbox_depth'))} warn={total(s, 'vigil_outbox_depth') > 0} />
        <Tile label="undeliverable" value={String(total(s, 'vigil_undeliverable_total'))} warn={total(s, 'vigil_undeliverable_total') > 0} />
      </section>
      <Chart title="records/s" xs={h.map((x) => x.t)} series={[{ label: 'records/s', values: h.map((x) => x.rate) }]} />
      <AlertCharts rows={alerts.data} error={alerts.error} />
      <div class="columns">
        <section>
          <h3>Lag per partition</h3>
          <table id="lag">
            <thead>
              <tr><th>topic</th><th>partition</th><th>high watermark</th><th>lag (records)</th></tr>
            </thead>
            <tbody>
              {series(s, 'vigil_partition_lag_records').map((x) => (
                <tr>
                  <td>{x.labels.topic}</td>
                  <td>{x.labels.partition}</td>
                  <td>{series(s, 'vigil_partition_high_watermark').find((y) => y.labels.topic === x.labels.topic && y.labels.partition === x.labels.partition)?.value}</td>
                  <td class={x.value > 0 ? 'warn' : ''}>{x.value}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <h3>Detection per log</h3>
          <table>
            <thead>
              <tr><th>log</th><th>late</th><th>skewed</th><th>newest event time</th></tr>
            </thead>
            <tbody>
              {series(s, 'vigil_detect_log_event_time_seconds').map((x) => (
                <tr>
                  <td>{x.labels.log}</td>
                  <td>{series(s, 'vigil_detect_log_late_total').find((y) => y.labels.log === x.labels.log)?.value ?? 0}</td>
                  <td>{series(s, 'vigil_detect_log_skewed_total').find((y) => y.labels.log === x.labels.log)?.value ?? 0}</td>
                  <td>{x.value ? new Date(x.value * 1000).toISOString() : '—'}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <h3>Delivery</h3>
          <table>
            <thead>
              <tr><th>target</th><th>waiting</th></tr>
            </thead>
            <tbody>
              {series(s, 'vigil_outbox_depth').map((x) => (
                <tr>
                  <td>{x.labels.target}</td>
                  <td class={x.value > 0 ? 'warn' : ''}>{x.value}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </section>
        <section>
          <h3>Logs and their newest signed checkpoint</h3>
          {cps.error && <p class="error">{cps.error}</p>}
          <table id="checkpoints">
            <thead>
              <tr><th>log</th><th>tree size</th><th>signed</th></tr>
            </thead>
            <tbody>
              {(cps.data?.checkpoints ?? []).map((c) => (
                <tr>
                  <td>{c.log}</td>
                  <td>{c.tree_size}</td>
                  <td>{signedAt(c.note)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </section>
      </div>
    </div>
  );
}

function signedAt(note: string): string {
  const m = /\nvigil-time ([0-9]+)\n/.exec(note);
  return m ? new Date(Number(m[1])).toISOString() : '?';
}

function Tile({ id, label, value, warn }: { id?: string; label: string; value: string; warn?: boolean }) {
  return (
    <div class={warn ? 'tile warn' : 'tile'} id={id}>
      <div class="value">{value}</div>
      <div class="label">{label}</div>
    </div>
  );
}

function AlertCharts({ rows, error }: { rows: { byTime: Row[]; byRule: Row[] } | null; error: string | null }) {
  if (error) return <p class="error">alerts: {error}</p>;
  if (!rows) return <p>Loading alerts…</p>;
  const xs = [...new Set(rows.byTime.map((r) => Number(r.t)))].sort((a, b) => a - b);
  const series = SEVERITIES.map((sev) => ({
    label: sev,
    values: xs.map((x) => {
      const r = rows.byTime.find((r) => Number(r.t) === x && r.severity === sev);
      return r ? Number(r.n) : 0;
    }),
  })).filter((s) => s.values.some((v) => v));
  return (
    <div class="columns">
      <section>
        {xs.length ? <Chart id="alerts-chart" title="alerts per minute, by severity" xs={xs} series={series} bars /> : <p>No alerts yet.</p>}
      </section>
      <section>
        <h3>Alerts by rule</h3>
        <table id="by-rule">
          <thead>
            <tr><th>rule</th><th>severity</th><th>alerts</th></tr>
          </thead>
          <tbody>
            {rows.byRule.map((r) => (
              <tr>
                <td><a href={`#/alerts?rule=${encodeURIComponent(String(r.rule_id))}`}>{String(r.rule_id)}</a></td>
                <td><span class={`sev ${r.severity}`}>{String(r.severity)}</span></td>
                <td>{String(r.n)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </section>
    </div>
  );
}
