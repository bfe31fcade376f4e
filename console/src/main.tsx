// The console's shell: sign-in, the caller's roles, navigation by the URL's fragment.
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import './style.css';
import { ApiError, type Caller, getJson, setCredential } from './api';
import { Overview } from './pages/overview';
import { Alerts } from './pages/alerts';
import { AlertPage } from './pages/alert';
import { Sql } from './pages/sql';
import { Events } from './pages/events';
import { loadPinned, savePinned } from './pinned';

function useHash(): string {
  const [h, setH] = useState(location.hash || '#/');
  useEffect(() => {
    const f = () => setH(location.hash || '#/');
    addEventListener('hashchange', f);
    return () => removeEventListener('hashchange', f);
  }, []);
  return h;
}

function SignIn({ onIn }: { onIn: (c: Caller) => void }) {
  const [cred, setCred] = useState('');
  const [pinned, setPinned] = useState(loadPinned());
  const [err, setErr] = useState<string | null>(null);
  const submit = async (e: Event) => {
    e.preventDefault();
    setErr(null);
    setCredential(cred.trim());
    try {
      savePinned(pinned);
      onIn(await getJson<Caller>('/v1/whoami'));
    } catch (x) {
      setCredential(null);
      setErr(x instanceof ApiError ? x.message : String(x));
    }
  };
  return (
    <main class="signin">
      <h1>Vigil</h1>
      <form onSubmit={submit}>
        <label>
          API key or bearer token
          <input id="credential" type="password" autocomplete="off" value={cred} onInput={(e) => setCred(e.currentTarget.value)} />
        </label>
        <label>
          Pinned signing keys (for Prove): the lines of <code>vigil keys show</code>, kept in this browser
          <textarea id="pinned" rows={3} value={pinned} onInput={(e) => setPinned(e.currentTarget.value)} />
        </label>
        <button id="sign-in" type="submit">Sign in</button>
        {err && <p class="error">{err}</p>}
      </form>
      <p class="hint">The credential stays in this tab's memory: closing the tab signs out. Every request the console makes is an API call, recorded in Vigil's own log.</p>
    </main>
  );
}

function App() {
  const [caller, setCaller] = useState<Caller | null>(null);
  const hash = useHash();
  useEffect(() => {
    setCredential(null, () => setCaller(null));
  }, []);
  if (!caller) return <SignIn onIn={setCaller} />;
  const can = (...roles: string[]) => roles.some((r) => caller.roles.includes(r));
  const [path, q] = hash.slice(1).split('?');
  const params = new URLSearchParams(q ?? '');
  let page;
  if (!can('reader', 'analyst', 'admin')) page = <p class="error">This credential ({caller.roles.join(', ')}) may not read the store.</p>;
  else if (path.startsWith('/alerts/')) page = <AlertPage id={decodeURIComponent(path.slice(8))} canChange={can('analyst', 'admin')} />;
  else if (path === '/alerts') page = <Alerts canChange={can('analyst', 'admin')} params={params} />;
  else if (path === '/sql') page = <Sql initial={params.get('q') ?? undefined} />;
  else if (path === '/events') page = <Events params={params} />;
  else page = <Overview />;
  const link = (to: string, label: string) => (
    <a href={`#${to}`} class={path === to || (to !== '/' && path.startsWith(to)) ? 'active' : ''}>
      {label}
    </a>
  );
  return (
    <>
      <header>
        <strong>Vigil</strong>
        <nav>
          {link('/', 'Overview')}
          {link('/alerts', 'Alerts')}
          {link('/events', 'Events')}
          {link('/sql', 'SQL')}
        </nav>
        <span class="who" id="who">
          {caller.principal} · {caller.roles.join(', ')}
        </span>
        <button
          class="link"
          onClick={() => {
            setCredential(null);
            setCaller(null);
          }}
        >
          Sign out
        </button>
      </header>
      <main>{page}</main>
    </>
  );
}

render(<App />, document.getElementById('app')!);
