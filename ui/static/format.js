// How figures read on the dashboard. Pure functions of their arguments; the
// browser test in ui/browser_test.go expects exactly these spellings.

const GiB = 1024; // the wire's *_mb fields are MiB, as nvidia-smi reports them

// pct: one decimal below 100, dropped when it is .0 ("97%", "12.5%", "250%").
export function pct(v) {
  if (!Number.isFinite(v)) return '–';
  if (Math.abs(v) >= 100) return `${Math.round(v)}%`;
  return `${trim1(v)}%`;
}

// mib formats a size given in MiB: MiB below 1 GiB, else GiB with one decimal.
export function mib(mb) {
  if (!Number.isFinite(mb)) return '–';
  if (mb < GiB) return `${Math.round(mb)} MiB`;
  return `${(mb / GiB).toFixed(1)} GiB`;
}

// vram formats used of total in one unit, picked by the total.
export function vram(used, total) {
  if (!(total > 0)) return used > 0 ? mib(used) : 'no GPU';
  if (total < GiB) return `${Math.round(used)} / ${Math.round(total)} MiB`;
  return `${(used / GiB).toFixed(1)} / ${(total / GiB).toFixed(1)} GiB`;
}

// rate formats MB/s: "0", "0.4", "12".
export function rate(v) {
  if (!Number.isFinite(v) || v < 0.05) return '0';
  return v < 10 ? v.toFixed(1) : `${Math.round(v)}`;
}

// uptime: "42s", "12m 03s", "3h 12m", "2d 4h".
export function uptime(s) {
  if (!Number.isFinite(s) || s < 0) return '–';
  s = Math.floor(s);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad2(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${pad2(Math.floor(s / 60) % 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor(s / 3600) % 24}h`;
}

// secs: a duration in ms to a tenth of a second below a minute ("4.2 s"),
// else as uptime ("1m 05s").
export function secs(ms) {
  if (!Number.isFinite(ms) || ms < 0) return '–';
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  return uptime(ms / 1000);
}

// gib: a size in bytes, in GiB with one decimal ("9.1 GiB").
export function gib(bytes) {
  if (!Number.isFinite(bytes) || bytes < 0) return '–';
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

// oneLine joins a text's non-blank lines (an engine's last output) with " | ".
export function oneLine(s) {
  if (typeof s !== 'string') return '';
  return s.split('\n').map((l) => l.trim()).filter(Boolean).join(' | ');
}

// ago: a duration in ms, coarse ("0.4 s", "12 s", "3 min", "2 h").
export function ago(ms) {
  const s = ms / 1000;
  if (s < 10) return `${Math.max(0, s).toFixed(1)} s`;
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${Math.round(s / 3600)} h`;
}

// clock: local wall time of an epoch ms, "14:03:07".
export function clock(ms) {
  const d = new Date(ms);
  return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

export function num(v, digits = 1) {
  if (!Number.isFinite(v)) return '–';
  return trim1(v, digits);
}

function trim1(v, digits = 1) {
  const s = v.toFixed(digits);
  return s.includes('.') ? s.replace(/\.?0+$/, '') : s;
}

function pad2(n) {
  return n < 10 ? `0${n}` : `${n}`;
}

// compareIDs orders ids naturally: "hive-2" before "hive-10".
const collator = new Intl.Collator('en', { numeric: true });
export const compareIDs = collator.compare;
