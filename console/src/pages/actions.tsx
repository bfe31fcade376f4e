// The alert lifecycle: acknowledge, resolve, suppress, each with a note. Shown only to a
// caller whose roles allow it; the server refuses anyone else anyway (403, recorded).
import { useState } from 'preact/hooks';
import { type Alert, ApiError, postJson } from '../api';

const ACTIONS: [string, string][] = [
  ['ack', 'Acknowledge'],
  ['resolve', 'Resolve'],
  ['suppress', 'Suppress'],
];

export function Actions({ alert, onChanged }: { alert: Alert; onChanged: (a: Alert) => void }) {
  const [note, setNote] = useState('');
  const [err, setErr] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const act = async (action: string) => {
    setBusy(true);
    setErr(null);
    try {
      onChanged(await postJson<Alert>(`/v1/alerts/${encodeURIComponent(alert.alert_id)}/${action}`, { note: note || undefined }));
      setNote('');
    } catch (e) {
      setErr(e instanceof ApiError ? `${e.status}: ${e.message}` : String(e));
    } finally {
      setBusy(false);
    }
  };
  return (
    <div class="actions">
      <input class="note" placeholder="note (kept with the revision)" value={note} onInput={(e) => setNote(e.currentTarget.value)} />
      {ACTIONS.map(([a, label]) => (
        <button id={`action-${a}`} disabled={busy} onClick={() => act(a)}>
          {label}
        </button>
      ))}
      {err && <span class="error">{err}</span>}
    </div>
  );
}
