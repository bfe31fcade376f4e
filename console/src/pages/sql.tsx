// SQL: an editor that knows the tables and columns (completion as you type, and the schema to
// click), results paged, downloads as the server formats them (CSV, JSON), and a time
// histogram of the result's first time column.
import { useEffect, useRef, useState } from 'preact/hooks';
import { query, queryBlob, type Row } from '../api';
import { Chart } from '../chart';

const PAGE = 100;
const DEFAULT_SQL = 'SELECT event_time, decision, caller_principal, callee_service, action\nFROM events\nORDER BY event_time DESC\nLIMIT 200';
const KEYWORDS = ['SELECT', 'FROM', 'WHERE', 'GROUP BY', 'ORDER BY', 'LIMIT', 'COUNT(*)', 'DISTINCT', 'AND', 'OR', 'NOT', 'AS', 'DESC', 'ASC', 'HAVING', 'JOIN', 'ON', 'LIKE', 'IN', 'IS NULL', 'BETWEEN', 'INTERVAL', 'now()', 'date_bin'];

type Schema = Record<string, { name: string; type: string }[]>;

export function Sql({ initial }: { initial?: string }) {
  const [sql, setSql] = useState(initial ?? DEFAULT_SQL);
  const [rows, setRows] = useState<Row[] | null>(null);
  const [err, setErr] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [page, setPage] = useState(0);
  const [schema, setSchema] = useState<Schema>({});
  const [suggest, setSuggest] = useState<string[]>([]);
  const ed = useRef<HTMLTextAreaElement>(null);
  useEffect(() => {
    query("SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = 'public' ORDER BY table_name, ordinal_position")
      .then((rs) => {
        const s: Schema = {};
        for (const r of rs) (s[String(r.table_name)] ??= []).push({ name: String(r.column_name), type: String(r.data_type) });
        setSchema(s);
      })
      .catch(() => setSchema({}));
  }, []);
  const run = async () => {
    setSuggest([]);
    setBusy(true);
    setErr(null);
    try {
      setRows(await query(sql));
      setPage(0);
    } catch (e) {
      setErr(e instanceof Error ? e.message : String(e));
      setRows(null);
    } finally {
      setBusy(false);
    }
  };
  const download = async (format: 'csv' | 'json') => {
    try {
      const blob = await queryBlob(sql, format);
      const a = document.createElement('a');
      a.href = URL.createObjectURL(blob);
      a.download = `vigil-query.${format}`;
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    } catch (e) {
      setErr(e instanceof Error ? e.message : String(e));
    }
  };
  // Completion: the word before the cursor against tables, columns and keywords.
  const words = [...Object.keys(schema), ...new Set(Object.values(schema).flat().map((c) => c.name)), ...KEYWORDS];
  const current = () => {
    const t = ed.current;
    if (!t) return { word: '', start: 0 };
    const before = t.value.slice(0, t.selectionStart);
    const m = /[A-Za-z_][A-Za-z0-9_]*$/.exec(before);
    return { word: m ? m[0] : '', start: m ? before.length - m[0].length : before.length };
  };
  const onInput = (v: string) => {
    setSql(v);
    const { word } = current();
    setSuggest(word.length >= 2 ? words.filter((w) => w.toLowerCase().startsWith(word.toLowerCase()) && w.toLowerCase() !== word.toLowerCase()).slice(0, 8) : []);
  };
  const complete = (w: string) => {
    const t = ed.current;
    if (!t) return;
    const { start } = current();
    const at = t.selectionStart;
    const v = t.value.slice(0, start) + w + t.value.slice(at);
    setSql(v);
    setSuggest([]);
    requestAnimationFrame(() => {
      t.focus();
      t.selectionStart = t.selectionEnd = start + w.length;
    });
  };
  const insert = (w: string) => {
    const t = ed.current;
    if (!t) return setSql(sql + w);
    const at = t.selectionStart;
    setSql(t.value.slice(0, at) + w + t.value.slice(t.selectionEnd));
  };
  // The server's JSON leaves out null values: the columns are every key any row has.
  const cols = rows ? [...new Set(rows.flatMap((r) => Object.keys(r)))] : [];
  const shown = rows ? rows.slice(page * PAGE, (page + 1) * PAGE) : [];
  return (
    <div class="sql">
      <h2>SQL</h2>
      <div class="columns sql-layout">
        <section>
          <textarea
            id="sql-editor"
            ref={ed}
            rows={8}
            spellcheck={false}
            value={sql}
            onInput={(e) => onInput(e.currentTarget.value)}
            onKeyDown={(e) => {
              if (e.key === 'Tab' && suggest.length) {
                e.preventDefault();
                complete(suggest[0]);
              } else if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
                e.preventDefault();
                run();
              } else if (e.key === 'Escape') setSuggest([]);
            }}
          />
          {suggest.length > 0 && (
            <div class="suggest" id="sql-suggest">
              {suggest.map((w) => (
                <button class="link" onClick={() => complete(w)}>
                  {w}
                </button>
              ))}
            </div>
          )}
          <div class="toolbar">
            <button id="sql-run" disabled={busy} onClick={run}>
              {busy ? 'Running…' : 'Run (Ctrl+Enter)'}
            </button>
            <button id="sql-csv" disabled={!rows} onClick={() => download('csv')}>Download CSV</button>
            <button id="sql-json" disabled={!rows} onClick={() => download('json')}>Download JSON</button>
            {rows && <span id="sql-count">{rows.length} rows</span>}
          </div>
          {err && <p class="error" id="sql-error">{err}</p>}
        </section>
        <aside class="schema" id="sql-schema">
          {Object.entries(schema).map(([t, cs]) => (
            <details>
              <summary>
                <button class="link" onClick={() => insert(t)}>{t}</button>
              </summary>
              <ul>
                {cs.map((c) => (
                  <li>
                    <button class="link" onClick={() => insert(c.name)}>{c.name}</button> <small>{c.type}</small>
                  </li>
                ))}
              </ul>
            </details>
          ))}
        </aside>
      </div>
      {rows && <Histogram rows={rows} />}
      {rows && (
        <>
          <div class="scroll">
            <table id="sql-results">
              <thead>
                <tr>{cols.map((c) => <th>{c}</th>)}</tr>
              </thead>
              <tbody>
                {shown.map((r) => (
                  <tr>{cols.map((c) => <td>{cell(r[c])}</td>)}</tr>
                ))}
              </tbody>
            </table>
          </div>
          <div class="pager">
            <button disabled={page === 0} onClick={() => setPage(page - 1)}>previous</button>
            <span>
              {rows.length ? `${page * PAGE + 1}–${page * PAGE + shown.length} of ${rows.length}` : 'no rows'}
            </span>
            <button disabled={(page + 1) * PAGE >= rows.length} onClick={() => setPage(page + 1)}>next</button>
          </div>
        </>
      )}
    </div>
  );
}

function cell(v: unknown): string {
  if (v === null || v === undefined) return '∅';
  if (typeof v === 'object') return JSON.stringify(v);
  const s = String(v);
  return s.length > 300 ? s.slice(0, 300) + '…' : s;
}

/** The first column whose values read as times, bucketed into about 60 bars. */
function Histogram({ rows }: { rows: Row[] }) {
  if (!rows.length) return null;
  const col = [...new Set(rows.flatMap((r) => Object.keys(r)))].find((c) => rows.slice(0, 20).every((r) => r[c] == null || (typeof r[c] === 'string' && /^\d{4}-\d\d-\d\dT/.test(r[c] as string))));
  if (!col) return null;
  const ts = rows.map((r) => (r[col] ? Date.parse(String(r[col])) / 1000 : NaN)).filter((t) => !Number.isNaN(t));
  if (ts.length < 2) return null;
  const lo = Math.min(...ts);
  const hi = Math.max(...ts);
  const n = 60;
  const w = Math.max((hi - lo) / n, 1e-3);
  const counts = new Array(n).fill(0);
  for (const t of ts) counts[Math.min(n - 1, Math.floor((t - lo) / w))]++;
  const xs = counts.map((_, i) => lo + i * w);
  return <Chart id="sql-histogram" title={`rows over ${col}`} xs={xs} series={[{ label: 'rows', values: counts }]} bars height={160} />;
}
