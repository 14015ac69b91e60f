// A small SVG line chart of a run: training loss per step, held-out loss and accuracy at evals.
// Hand-written SVG: no dependency, opens in any browser.

export interface Series {
  label: string;
  color: string;
  points: [number, number][];
  /** Plotted against the right axis (0..1), e.g. accuracy. */
  right?: boolean;
}

function escape(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) ?? raw;
  const ticks: number[] = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-12; t += step)
    ticks.push(Number(t.toPrecision(6)));
  return ticks;
}

export function lineChart(title: string, series: Series[], xLabel = "step"): string {
  const width = 720;
  const height = 360;
  const m = { left: 60, right: 60, top: 36, bottom: 44 };
  const left = series.filter((s) => !s.right).flatMap((s) => s.points);
  const all = series.flatMap((s) => s.points);
  const xs = all.map((p) => p[0]);
  const x0 = Math.min(...xs, 0);
  const x1 = Math.max(...xs, 1);
  const ys = left.map((p) => p[1]).filter(Number.isFinite);
  const y0 = Math.min(...ys, 0);
  const y1 = Math.max(...ys, 1e-9);
  const sx = (x: number) => m.left + ((x - x0) / (x1 - x0 || 1)) * (width - m.left - m.right);
  const sy = (y: number, right = false) => {
    const [lo, hi] = right ? [0, 1] : [y0, y1];
    return height - m.bottom - ((y - lo) / (hi - lo || 1)) * (height - m.top - m.bottom);
  };
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${width / 2}" y="20" text-anchor="middle" font-size="14">${escape(title)}</text>`,
  ];
  for (const t of niceTicks(y0, y1)) {
    out.push(
      `<line x1="${m.left}" x2="${width - m.right}" y1="${sy(t)}" y2="${sy(t)}" stroke="#eee"/>`,
    );
    out.push(`<text x="${m.left - 6}" y="${sy(t) + 4}" text-anchor="end">${t}</text>`);
  }
  for (const t of niceTicks(x0, x1))
    out.push(`<text x="${sx(t)}" y="${height - m.bottom + 16}" text-anchor="middle">${t}</text>`);
  if (series.some((s) => s.right)) {
    for (const t of [0, 0.25, 0.5, 0.75, 1])
      out.push(`<text x="${width - m.right + 6}" y="${sy(t, true) + 4}">${t}</text>`);
  }
  out.push(
    `<text x="${width / 2}" y="${height - 8}" text-anchor="middle">${escape(xLabel)}</text>`,
  );
  out.push(
    `<rect x="${m.left}" y="${m.top}" width="${width - m.left - m.right}" height="${height - m.top - m.bottom}" fill="none" stroke="#999"/>`,
  );
  series.forEach((s, i) => {
    const pts = s.points.filter((p) => Number.isFinite(p[1]));
    if (pts.length > 1) {
      out.push(
        `<polyline fill="none" stroke="${s.color}" stroke-width="1.5" points="${pts.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y, s.right).toFixed(1)}`).join(" ")}"/>`,
      );
    }
    for (const [x, y] of pts.length <= 50 ? pts : [])
      out.push(
        `<circle cx="${sx(x).toFixed(1)}" cy="${sy(y, s.right).toFixed(1)}" r="2.5" fill="${s.color}"/>`,
      );
    out.push(
      `<rect x="${m.left + 10}" y="${m.top + 8 + i * 16}" width="10" height="10" fill="${s.color}"/>`,
    );
    out.push(`<text x="${m.left + 26}" y="${m.top + 17 + i * 16}">${escape(s.label)}</text>`);
  });
  out.push("</svg>");
  return out.join("\n") + "\n";
}
