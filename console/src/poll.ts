// Polling: run `f` now and every `ms` while the page is shown; errors are kept for display.
import { useEffect, useRef, useState } from 'preact/hooks';

export function usePoll<T>(f: () => Promise<T>, ms: number, deps: unknown[] = []): { data: T | null; error: string | null; tick: number } {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [tick, setTick] = useState(0);
  const live = useRef(true);
  useEffect(() => {
    live.current = true;
    let timer: number | undefined;
    const run = async () => {
      try {
        const d = await f();
        if (!live.current) return;
        setData(d);
        setError(null);
      } catch (e) {
        if (live.current) setError(e instanceof Error ? e.message : String(e));
      }
      if (live.current) {
        setTick((t) => t + 1);
        timer = window.setTimeout(run, ms);
      }
    };
    run();
    return () => {
      live.current = false;
      window.clearTimeout(timer);
    };
  }, deps);
  return { data, error, tick };
}
