// Alerts: newest first, filtered by status, rule, severity and detection time; polled, so new
// alerts appear without a reload (and are marked new).
import { useRef, useState } from 'preact/hooks';
import { type AlertsPage, getJson, time } from '../api';
import { usePoll } from '../poll';

const STATUSES = ['', 'open', 'acknowledged', 'resolved', 'suppressed'];
const SEVERITIES = ['', 'critical', 'high', 'medium', 'low', 'info'];
const PAGE = 50;

export function Alerts({ canChange, params }: { canChange: boolean; params: URLSearchParams }) {
  const [status, setStatus] = useState(params.get('status') ?? '');
  const [rule, setRule] = useState(params.get('rule') ?? '');
  const [severity, setSeverity] = useState(params.get('severity') ?? '');
  const [from, setFrom] = useState('');
  const [to, setTo] = useState('');
  const [offset, setOffset] = useState(0);
  const seen = useRef<Set<string> | null>(null);
  const fresh = useRef<Set<string>>(new Set());
  const q = new URLSearchParams();
  if (status) q.set('status', status);
  if (rule) q.set('rule', rule);
  if (severity) q.set('severity', severity);
  if (from) q.set('from', new Date(from).toISOString());
  if (to) q.set('to', new Date(to).toISOString());
  q.set('offset', String(offset));
  q.set('limit', String(PAGE));
  const page = usePoll(
    async () => {
      const p = await getJson<AlertsPage>(`/v1/alerts?${q}`);
      // Alerts not on the first page seen are new: marked until the filters change.
      if (seen.current === null) seen.current = new Set(p.alerts.map((a) => a.alert_id));
      for (const a of p.alerts) if (!seen.current.has(a.alert_id)) fresh.current.add(a.alert_id);
      return p;
    },
    3000,
    [q.toString()],
  );
  const reset = () => {
    seen.current = null;
    fresh.current = new Set();
    setOffset(0);
  };
  const alerts = page.data?.alerts ?? [];
  return (
    <div>
      <h2>Alerts {page.data && <small id="alerts-total">({page.data.total})</small>}</h2>
      <form class="filters" onSubmit={(e) => e.preventDefault()}>
        <select id="f-status" value={status} onChange={(e) => (setStatus(e.currentTarget.value), reset())}>
          {STATUSES.map((s) => <option value={s}>{s || 'any status'}</option>)}
        </select>
        <select id="f-severity" value={severity} onChange={(e) => (setSeverity(e.currentTarget.value), reset())}>
          {SEVERITIES.map((s) => <option value={s}>{s || 'any severity'}</option>)}
        </select>
        <input id="f-rule" placeholder="rule id" value={rule} onChange={(e) => (setRule(e.currentTarget.value), reset())} />
        <label>from <input type="datetime-local" value={from} onChange={(e) => (setFrom(e.currentTarget.value), reset())} /></label>
        <label>to <input type="datetime-local" value={to} onChange={(e) => (setTo(e.currentTarget.value), reset())} /></label>
      </form>
      {page.error && <p class="error">{page.error}</p>}
      <table id="alerts">
        <thead>
          <tr><th>detected</th><th>severity</th><th>status</th><th>rule</th><th>title</th><th>group</th><th>events</th></tr>
        </thead>
        <tbody>
          {alerts.map((a) => (
            <tr class={fresh.current.has(a.alert_id) ? 'new' : ''} data-rule={a.rule_id} data-alert={a.alert_id}>
              <td>{time(a.detected_ns)}</td>
              <td><span class={`sev ${a.severity}`}>{a.severity}</span></td>
              <td>{a.status}</td>
              <td>{a.rule_id}</td>
              <td><a href={`#/alerts/${encodeURIComponent(a.alert_id)}`}>{a.title}</a></td>
              <td>{Object.entries(a.group_key).map(([k, v]) => `${k}=${v ?? '∅'}`).join(' ')}</td>
              <td>{a.event_count}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <div class="pager">
        <button disabled={offset === 0} onClick={() => setOffset(Math.max(0, offset - PAGE))}>previous</button>
        <span>{alerts.length ? `${offset + 1}–${offset + alerts.length}` : 'none'}</span>
        <button disabled={page.data?.next_offset == null} onClick={() => setOffset(page.data!.next_offset!)}>next</button>
      </div>
      {!canChange && <p class="hint">Your roles can read alerts, not change them.</p>}
    </div>
  );
}
