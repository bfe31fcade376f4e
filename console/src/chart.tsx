// A uPlot chart in a Preact component: time on x, one series per label.
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

const COLORS = ['#d62728', '#ff7f0e', '#e6b800', '#1f77b4', '#7f7f7f', '#2ca02c', '#9467bd', '#8c564b'];

export interface ChartProps {
  id?: string;
  title: string;
  /** Unix seconds. */
  xs: number[];
  series: { label: string; values: (number | null)[] }[];
  bars?: boolean;
  height?: number;
}

export function Chart({ id, title, xs, series, bars, height }: ChartProps) {
  const el = useRef<HTMLDivElement>(null);
  useEffect(() => {
    if (!el.current) return;
    const width = Math.max(300, el.current.clientWidth || 600);
    const opts: uPlot.Options = {
      title,
      width,
      height: height ?? 200,
      series: [
        {},
        ...series.map((s, i) => ({
          label: s.label,
          stroke: COLORS[i % COLORS.length],
          fill: bars ? COLORS[i % COLORS.length] + '88' : undefined,
          paths: bars ? uPlot.paths.bars!({ size: [0.8, 40] }) : undefined,
          points: { show: false },
        })),
      ],
      // The ranges computed here, not guessed by uPlot (one point would span years).
      scales: {
        x: { time: true, auto: false, range: xRange(xs) },
        y: { auto: false, range: [0, Math.max(1, ...series.flatMap((s) => s.values.map((v) => v ?? 0))) * 1.1] },
      },
      axes: [{}, { size: 50 }],
    };
    const data = [xs, ...series.map((s) => s.values)] as uPlot.AlignedData;
    const u = new uPlot(opts, data, el.current);
    return () => u.destroy();
  }, [title, JSON.stringify(xs), JSON.stringify(series), bars, height]);
  return <div class="chart" id={id} ref={el} />;
}

/** The x range: the data's, at least five minutes wide, ending a minute after the last point. */
function xRange(xs: number[]): [number, number] {
  const now = Date.now() / 1000;
  const lo = xs.length ? Math.min(...xs) : now - 300;
  const hi = xs.length ? Math.max(...xs) : now;
  return hi - lo >= 300 ? [lo, hi + 60] : [hi - 300, hi + 60];
}
