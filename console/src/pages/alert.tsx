// One alert: its group, counts and timeline, the rule that raised it, every revision with who
// and when, and its evidence with the raw records. Prove checks each evidence event in this
// page (prove.ts) against the keys the analyst pinned at sign-in.
import { useEffect, useState } from 'preact/hooks';
import { type Alert, getJson, type RuleInfo, time } from '../api';
import { fromB64, type InclusionBundle, parsePinned, type Verdict, verifyInclusion } from '../prove';
import { loadPinned } from '../pinned';
import { Actions } from './actions';

/** Most evidence events one Prove fetches and checks. */
const MAX_PROVE = 100;

type Proved = { bundle: InclusionBundle | null; verdict: Verdict };

export function AlertPage({ id, canChange }: { id: string; canChange: boolean }) {
  const [revs, setRevs] = useState<Alert[] | null>(null);
  const [rule, setRule] = useState<RuleInfo | null | undefined>(undefined);
  const [err, setErr] = useState<string | null>(null);
  const [proofs, setProofs] = useState<Record<number, Proved>>({});
  const [proving, setProving] = useState(false);
  const load = async () => {
    try {
      const r = await getJson<{ revisions: Alert[] }>(`/v1/alerts/${encodeURIComponent(id)}`);
      setRevs(r.revisions);
      const rules = await getJson<{ rules: RuleInfo[] }>('/v1/rules');
      setRule(rules.rules.find((x) => x.id === r.revisions[0].rule_id) ?? null);
    } catch (e) {
      setErr(e instanceof Error ? e.message : String(e));
    }
  };
  useEffect(() => {
    load();
  }, [id]);
  if (err) return <p class="error">{err}</p>;
  if (!revs) return <p>Loading…</p>;
  const a = revs[revs.length - 1];
  const evidence = a.evidence.slice(0, MAX_PROVE);
  const prove = async () => {
    setProving(true);
    let pinned;
    try {
      pinned = parsePinned(loadPinned());
    } catch (e) {
      const v: Verdict = { proven: false, steps: [{ ok: false, what: `pinned keys: ${e instanceof Error ? e.message : e}` }] };
      setProofs(Object.fromEntries(evidence.map((_, i) => [i, { bundle: null, verdict: v }])));
      setProving(false);
      return;
    }
    const out: Record<number, Proved> = {};
    for (const [i, ev] of evidence.entries()) {
      try {
        const q = new URLSearchParams({ log: ev.log, index: String(ev.index) });
        const b = await getJson<InclusionBundle>(`/v1/proofs/inclusion?${q}`);
        out[i] = { bundle: b, verdict: verifyInclusion(b, ev, pinned) };
      } catch (e) {
        out[i] = { bundle: null, verdict: { proven: false, steps: [{ ok: false, what: `no proof: ${e instanceof Error ? e.message : e}` }] } };
      }
      setProofs({ ...out });
    }
    setProving(false);
  };
  const done = Object.keys(proofs).length;
  const allProven = done === evidence.length && evidence.length > 0 && Object.values(proofs).every((p) => p.verdict.proven);
  return (
    <div class="alert-page">
      <h2>
        <span class={`sev ${a.severity}`}>{a.severity}</span> {a.title}
      </h2>
      <p>
        <span id="alert-status" class={`status ${a.status}`}>{a.status}</span>
        {a.status_by && <> by <b>{a.status_by}</b> at {time(a.status_at_ns ?? 0)}{a.status_note && <> — “{a.status_note}”</>}</>}
      </p>
      {canChange && <Actions alert={a} onChanged={() => load()} />}
      <div class="columns">
        <section>
          <h3>Group and counts</h3>
          <dl>
            {Object.entries(a.group_key).map(([k, v]) => (
              <>
                <dt>{k}</dt>
                <dd>{v ?? '∅'}</dd>
              </>
            ))}
            <dt>events</dt><dd>{a.event_count}</dd>
            <dt>evidence</dt><dd>{a.evidence.length}</dd>
            {a.incident_id && (<><dt>incident</dt><dd>{a.incident_subject} ({a.incident_id})</dd></>)}
          </dl>
          <h3>Timeline</h3>
          <ul class="timeline">
            <li>{time(a.first_event_ns)} — first event</li>
            <li>{time(a.last_event_ns)} — last event</li>
            {revs.map((r) => (
              <li>
                {time(r.revision === 1 ? r.detected_ns : r.status_at_ns ?? r.detected_ns)} — revision {r.revision}: {r.status}
                {r.status_by ? ` by ${r.status_by}` : r.revision === 1 ? ' (detected)' : ''}
              </li>
            ))}
          </ul>
          <h3>Detail</h3>
          <ul>{a.detail.map((d) => <li>{d}</li>)}</ul>
        </section>
        <section>
          <h3>Rule</h3>
          <p>
            <b>{a.rule_id}</b> ({a.rule_kind}), version {a.rule_version} raised it.
          </p>
          {rule === null && <p class="hint">The rule is no longer defined.</p>}
          {rule && (
            <>
              {rule.version !== a.rule_version && <p class="warn">Its definition is now version {rule.version}.</p>}
              <p>{rule.description}</p>
              <p class="hint">{rule.source}</p>
              {rule.definition && <pre id="rule-definition" class="code">{rule.definition}</pre>}
            </>
          )}
        </section>
      </div>
      <h3>Revisions</h3>
      <table id="revisions">
        <thead>
          <tr><th>#</th><th>status</th><th>by</th><th>at</th><th>note</th><th>events</th></tr>
        </thead>
        <tbody>
          {revs.map((r) => (
            <tr>
              <td>{r.revision}</td>
              <td>{r.status}</td>
              <td>{r.status_by ?? 'detection'}</td>
              <td>{time(r.status_at_ns ?? r.detected_ns)}</td>
              <td>{r.status_note ?? ''}</td>
              <td>{r.event_count}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <h3>
        Evidence{' '}
        <button id="prove" disabled={proving || evidence.length === 0} onClick={prove}>
          Prove
        </button>{' '}
        {done > 0 && (
          <span id="prove-verdict" class={allProven ? 'proven' : proving ? '' : 'not-proven'}>
            {proving ? `checking ${done}/${evidence.length}…` : allProven ? `proven: ${done} of ${evidence.length} events, in this page` : 'not proven'}
          </span>
        )}
      </h3>
      <p class="hint">Prove fetches each event's inclusion proof and signed checkpoint and checks them here: blake3 leaf and Merkle path, Ed25519 signature against the keys pinned at sign-in.</p>
      {a.evidence.length > MAX_PROVE && <p class="hint">The first {MAX_PROVE} of {a.evidence.length} evidence events.</p>}
      <table id="evidence">
        <thead>
          <tr><th>log</th><th>index</th><th>event time</th><th>event id</th><th>proof</th><th>raw record</th></tr>
        </thead>
        <tbody>
          {evidence.map((ev, i) => {
            const p = proofs[i];
            return (
              <tr class="evidence">
                <td>{ev.log}</td>
                <td>{ev.index}</td>
                <td>{time(ev.event_time_ns)}</td>
                <td>{ev.event_id ?? ''}</td>
                <td class={p ? (p.verdict.proven ? 'proven' : 'not-proven') : ''}>
                  {p && (
                    <details>
                      <summary>{p.verdict.proven ? 'proven' : 'not proven'}</summary>
                      <ul>{p.verdict.steps.map((s) => <li class={s.ok ? 'ok' : 'bad'}>{s.ok ? '✓' : '✗'} {s.what}</li>)}</ul>
                    </details>
                  )}
                </td>
                <td>{p?.bundle ? <pre class="raw">{raw(p.bundle)}</pre> : ''}</td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}

/** The record's value as text (as received; not re-encoded). */
function raw(b: InclusionBundle): string {
  const v = b.record.value === null ? null : fromB64(b.record.value);
  if (v === null) return '(no value)';
  const text = new TextDecoder('utf-8', { fatal: false }).decode(v);
  return text.length > 4000 ? text.slice(0, 4000) + '…' : text;
}
