// Events by principal, address and time range, with pivots: a caller's other calls ("what else
// did this caller do"), a callee's other callers ("who else called this"). Each search is one
// SQL query with the values as quoted literals.
import { useEffect, useState } from 'preact/hooks';
import { lit, query, type Row } from '../api';

const COLS = 'event_time, decision, kind, caller_principal, caller_service, caller_ip, callee_service, callee_ip, callee_port, action, resource, reason';

export function Events({ params }: { params: URLSearchParams }) {
  const [f, setF] = useState({
    principal: params.get('principal') ?? '',
    callee: params.get('callee') ?? '',
    ip: params.get('ip') ?? '',
    from: params.get('from') ?? '',
    to: params.get('to') ?? '',
  });
  const [rows, setRows] = useState<Row[] | null>(null);
  const [err, setErr] = useState<string | null>(null);
  const search = async (g = f) => {
    const where: string[] = [];
    if (g.principal) where.push(`caller_principal = ${lit(g.principal)}`);
    if (g.callee) where.push(`callee_service = ${lit(g.callee)}`);
    if (g.ip) where.push(`(caller_ip = ${lit(g.ip)} OR callee_ip = ${lit(g.ip)})`);
    if (g.from) where.push(`event_time >= ${lit(new Date(g.from).toISOString())}`);
    if (g.to) where.push(`event_time < ${lit(new Date(g.to).toISOString())}`);
    const sql = `SELECT ${COLS} FROM events${where.length ? ' WHERE ' + where.join(' AND ') : ''} ORDER BY event_time DESC LIMIT 500`;
    setErr(null);
    try {
      setRows(await query(sql));
    } catch (e) {
      setErr(e instanceof Error ? e.message : String(e));
    }
  };
  useEffect(() => {
    search();
  }, [params.toString()]);
  const pivot = (g: Partial<typeof f>) => {
    const n = { principal: '', callee: '', ip: '', from: f.from, to: f.to, ...g };
    setF(n);
    search(n);
  };
  const input = (k: keyof typeof f, label: string, type = 'text') => (
    <label>
      {label} <input id={`ev-${k}`} type={type} value={f[k]} onInput={(e) => setF({ ...f, [k]: e.currentTarget.value })} />
    </label>
  );
  return (
    <div>
      <h2>Events</h2>
      <form
        class="filters"
        onSubmit={(e) => {
          e.preventDefault();
          search();
        }}
      >
        {input('principal', 'caller')}
        {input('callee', 'callee service')}
        {input('ip', 'address')}
        {input('from', 'from', 'datetime-local')}
        {input('to', 'to', 'datetime-local')}
        <button id="ev-search" type="submit">Search</button>
      </form>
      {err && <p class="error">{err}</p>}
      {rows && (
        <div class="scroll">
          <table id="events">
            <thead>
              <tr>
                <th>time</th><th>decision</th><th>kind</th><th>caller</th><th>caller ip</th><th>callee</th><th>callee ip:port</th><th>action</th><th>resource</th><th>reason</th>
              </tr>
            </thead>
            <tbody>
              {rows.map((r) => (
                <tr class={r.decision === 'deny' ? 'deny' : ''}>
                  <td>{String(r.event_time ?? '')}</td>
                  <td>{String(r.decision ?? '')}</td>
                  <td>{String(r.kind ?? '')}</td>
                  <td>{r.caller_principal ? <button class="link pivot-caller" title="what else did this caller do" onClick={() => pivot({ principal: String(r.caller_principal) })}>{String(r.caller_principal)}</button> : String(r.caller_service ?? '')}</td>
                  <td>{r.caller_ip ? <button class="link" onClick={() => pivot({ ip: String(r.caller_ip) })}>{String(r.caller_ip)}</button> : ''}</td>
                  <td>{r.callee_service ? <button class="link pivot-callee" title="who else called this" onClick={() => pivot({ callee: String(r.callee_service) })}>{String(r.callee_service)}</button> : ''}</td>
                  <td>{r.callee_ip ? `${r.callee_ip}:${r.callee_port ?? ''}` : ''}</td>
                  <td>{String(r.action ?? '')}</td>
                  <td>{String(r.resource ?? '')}</td>
                  <td>{String(r.reason ?? '')}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <p class="hint">{rows.length} events (newest 500 at most). Click a caller, address or callee to pivot.</p>
        </div>
      )}
    </div>
  );
}
