// Checking an inclusion proof bundle in the page, with nothing from the server but the bundle:
// the record's leaf hash recomputed from its raw bytes (blake3, derive-key mode, as
// store/src/chain.rs), the Merkle path to the checkpoint's root (RFC 9162 §2.1.3.2 with
// blake3, as store/src/merkle.rs), the checkpoint's text (store/src/checkpoint), and its
// C2SP signed-note signature (Ed25519) against the keys the analyst pinned. "Proven" rests on
// these computations and the pinned keys, never on what the server says about them.

import { blake3 } from '@noble/hashes/blake3.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { ed25519 } from '@noble/curves/ed25519.js';

const LEAF_CONTEXT = 'vigil 2026-11-22 kafka record leaf v1';
const enc = new TextEncoder();

export interface BundleRecord {
  topic: string;
  partition: number;
  offset: number;
  timestamp_ms: number | null;
  key: string | null;
  value: string | null;
  headers: { key: string; value: string | null }[];
}

export interface InclusionBundle {
  format: string;
  kind: string;
  leaf_index: number;
  record: BundleRecord;
  proof: string[];
  checkpoint: string;
}

/** What the evidence says the record is (from the alert). */
export interface Claim {
  log: string;
  index: number;
  leaf_hash: string;
}

/** A pinned key: a C2SP verifier key, and optionally the range it may sign in. */
export interface PinnedKey {
  vkey: string;
  name: string;
  id: number;
  publicKey: Uint8Array;
  fromMs: number | null;
  untilMs: number | null;
}

export interface Step {
  ok: boolean;
  what: string;
}

export interface Verdict {
  proven: boolean;
  steps: Step[];
}

export function hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

function fromHex(s: string): Uint8Array | null {
  if (!/^([0-9a-f]{2})*$/i.test(s)) return null;
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function fromB64(s: string): Uint8Array | null {
  try {
    const bin = atob(s);
    return Uint8Array.from(bin, (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Bytes in the order the chain encodes them. */
class Encoder {
  parts: Uint8Array[] = [];
  bytes(b: Uint8Array) {
    this.parts.push(b);
  }
  u8(n: number) {
    this.bytes(Uint8Array.of(n));
  }
  u32(n: number) {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, n, true);
    this.bytes(b);
  }
  i32(n: number) {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setInt32(0, n, true);
    this.bytes(b);
  }
  i64(n: number | bigint) {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigInt64(0, BigInt(n), true);
    this.bytes(b);
  }
  u64(n: number) {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(n), true);
    this.bytes(b);
  }
  str(s: string) {
    const b = enc.encode(s);
    this.u32(b.length);
    this.bytes(b);
  }
  optBytes(b: Uint8Array | null) {
    if (b === null) return this.u8(0);
    this.u8(1);
    this.u64(b.length);
    this.bytes(b);
  }
  done(): Uint8Array {
    const n = this.parts.reduce((a, p) => a + p.length, 0);
    const out = new Uint8Array(n);
    let at = 0;
    for (const p of this.parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
}

/** A base64 field of the bundle as bytes (`null` stays `null`); throws on bad base64. */
function field(v: string | null, what: string): Uint8Array | null {
  if (v === null) return null;
  const b = fromB64(v);
  if (b === null) throw new Error(`${what} is not base64`);
  return b;
}

/** The leaf hash of a record (store/src/chain.rs `leaf_hash`). */
export function leafHash(r: BundleRecord): Uint8Array {
  const e = new Encoder();
  e.str(r.topic);
  e.i32(r.partition);
  e.i64(r.offset);
  if (r.timestamp_ms === null) e.u8(0);
  else {
    e.u8(1);
    e.i64(r.timestamp_ms);
  }
  e.optBytes(field(r.key, 'key'));
  e.optBytes(field(r.value, 'value'));
  e.u32(r.headers.length);
  for (const h of r.headers) {
    e.str(h.key);
    e.optBytes(field(h.value, `header ${h.key}`));
  }
  return blake3(e.done(), { context: enc.encode(LEAF_CONTEXT) });
}

function leafNode(leaf: Uint8Array): Uint8Array {
  const b = new Uint8Array(33);
  b[0] = 0;
  b.set(leaf, 1);
  return blake3(b);
}

function interior(l: Uint8Array, r: Uint8Array): Uint8Array {
  const b = new Uint8Array(65);
  b[0] = 1;
  b.set(l, 1);
  b.set(r, 33);
  return blake3(b);
}

/** RFC 9162 §2.1.3.2: the root the path leads to, or `null` if the path does not fit. */
export function rootFromPath(index: number, size: number, leaf: Uint8Array, path: Uint8Array[]): Uint8Array | null {
  if (index >= size) return null;
  let f = BigInt(index);
  let s = BigInt(size - 1);
  let r = leafNode(leaf);
  for (const p of path) {
    if (s === 0n) return null;
    if ((f & 1n) === 1n || f === s) {
      r = interior(p, r);
      while ((f & 1n) === 0n && f !== 0n) {
        f >>= 1n;
        s >>= 1n;
      }
    } else {
      r = interior(r, p);
    }
    f >>= 1n;
    s >>= 1n;
  }
  return s === 0n ? r : null;
}

export interface Checkpoint {
  origin: string;
  size: number;
  root: Uint8Array;
  timeMs: number;
}

/** A checkpoint's text: exactly the six lines Vigil signs. */
export function parseCheckpoint(text: string): Checkpoint {
  if (!text.endsWith('\n')) throw new Error('checkpoint: no final newline');
  const lines = text.slice(0, -1).split('\n');
  if (lines.length !== 6) throw new Error(`checkpoint: ${lines.length} lines, expected 6`);
  const [origin, size, root, chain, prev, time] = lines;
  if (!origin || /\s/.test(origin)) throw new Error('checkpoint: origin');
  if (!/^(0|[1-9][0-9]*)$/.test(size)) throw new Error('checkpoint: tree size');
  const r = fromB64(root);
  if (!r || r.length !== 32) throw new Error('checkpoint: root');
  if (!/^vigil-chain -?[0-9]+ [0-9a-f]{64}$/.test(chain)) throw new Error('checkpoint: vigil-chain');
  if (!/^vigil-prev (-|[A-Za-z0-9+/=]+)$/.test(prev)) throw new Error('checkpoint: vigil-prev');
  const t = /^vigil-time ([0-9]+)$/.exec(time);
  if (!t) throw new Error('checkpoint: vigil-time');
  return { origin, size: Number(size), root: r, timeMs: Number(t[1]) };
}

/** The key ID of a verifier key (C2SP signed-note): SHA-256(name ‖ "\n" ‖ 0x01 ‖ key)[0..4]. */
function keyId(name: string, publicKey: Uint8Array): number {
  const n = enc.encode(name);
  const b = new Uint8Array(n.length + 2 + publicKey.length);
  b.set(n, 0);
  b[n.length] = 0x0a;
  b[n.length + 1] = 0x01;
  b.set(publicKey, n.length + 2);
  const h = sha256(b);
  return new DataView(h.buffer, h.byteOffset).getUint32(0, false);
}

/**
 * Pinned keys from what the analyst pasted: C2SP verifier keys (`name+hex+base64`), one a
 * line, each optionally followed by its validity range as `vigil keys show` prints the
 * registry (`<vkey> <valid from ms> <valid until ms|->`). Lines starting with `#` are skipped.
 */
export function parsePinned(text: string): PinnedKey[] {
  const out: PinnedKey[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const [vkey, from, until] = line.split(/\s+/);
    // name+hex+base64: the key's base64 may hold '+' itself.
    const m = /^([^+\s]+)\+([0-9a-f]{8})\+([A-Za-z0-9+/=]+)$/.exec(vkey);
    if (!m) throw new Error(`not a verifier key: ${vkey}`);
    const [, name, idHex, b64] = m;
    const k = fromB64(b64);
    if (!k || k.length !== 33 || k[0] !== 0x01) throw new Error(`not an Ed25519 verifier key: ${vkey}`);
    const publicKey = k.slice(1);
    const id = keyId(name, publicKey);
    if (parseInt(idHex, 16) !== id) {
      throw new Error(`the key ID of ${name} does not match its key`);
    }
    const num = (s: string | undefined) => (s === undefined || s === '-' ? null : Number(s));
    out.push({ vkey, name, id, publicKey, fromMs: num(from), untilMs: num(until) });
  }
  return out;
}

/** A signed note's text and signatures (C2SP signed-note). */
function splitNote(note: string): { text: string; sigs: { name: string; id: number; sig: Uint8Array }[] } {
  const at = note.indexOf('\n\n');
  if (at < 0) throw new Error('note: no blank line before the signatures');
  const text = note.slice(0, at + 1);
  const rest = note.slice(at + 2);
  if (!rest.endsWith('\n')) throw new Error('note: no final newline');
  const sigs = [];
  for (const line of rest.slice(0, -1).split('\n')) {
    const m = /^\u2014 (\S+) ([A-Za-z0-9+/=]+)$/.exec(line);
    if (!m) throw new Error(`note: not a signature line: ${line}`);
    const b = fromB64(m[2]);
    if (!b || b.length < 5) throw new Error('note: signature too short');
    const id = new DataView(b.buffer, b.byteOffset).getUint32(0, false);
    sigs.push({ name: m[1], id, sig: b.slice(4) });
  }
  if (sigs.length === 0 || sigs.length > 8) throw new Error(`note: ${sigs.length} signatures`);
  return { text, sigs };
}

/** Check one evidence event's bundle against the alert's claim and the pinned keys. */
export function verifyInclusion(bundle: InclusionBundle, claim: Claim, pinned: PinnedKey[]): Verdict {
  const steps: Step[] = [];
  const step = (ok: boolean, what: string) => {
    steps.push({ ok, what });
    return ok;
  };
  const fail = (what: string): Verdict => {
    step(false, what);
    return { proven: false, steps };
  };
  try {
    if (bundle.format === undefined || bundle.kind !== 'inclusion') return fail('not an inclusion bundle');
    const r = bundle.record;
    const log = `${r.topic}/${r.partition}`;
    if (!step(log === claim.log && bundle.leaf_index === claim.index, `the record is ${log} #${bundle.leaf_index} (the alert names ${claim.log} #${claim.index})`)) {
      return { proven: false, steps };
    }
    const leaf = leafHash(r);
    if (!step(hex(leaf) === claim.leaf_hash.toLowerCase(), `leaf hash recomputed from the raw record: ${hex(leaf).slice(0, 16)}… (the alert's: ${claim.leaf_hash.slice(0, 16)}…)`)) {
      return { proven: false, steps };
    }
    const { text, sigs } = splitNote(bundle.checkpoint);
    const cp = parseCheckpoint(text);
    if (!step(cp.origin.endsWith(`/${log}`), `checkpoint of ${cp.origin}, tree size ${cp.size}`)) {
      return { proven: false, steps };
    }
    const path: Uint8Array[] = [];
    for (const p of bundle.proof) {
      const b = fromHex(p);
      if (!b || b.length !== 32) return fail('a proof hash is not 32 bytes of hex');
      path.push(b);
    }
    const root = rootFromPath(bundle.leaf_index, cp.size, leaf, path);
    if (!step(root !== null && equal(root, cp.root), `Merkle path (${path.length} hashes) leads to the checkpoint's root`)) {
      return { proven: false, steps };
    }
    if (pinned.length === 0) return fail('no pinned key: the signature cannot be checked');
    let good = 0;
    for (const s of sigs) {
      const k = pinned.find((p) => p.name === s.name && p.id === s.id);
      if (!k) continue;
      const ok = s.sig.length === 64 && ed25519.verify(s.sig, enc.encode(text), k.publicKey, { zip215: false });
      if (!ok) return fail(`the signature by ${k.name} does not verify: forged or edited`);
      const inRange = (k.fromMs === null || k.fromMs <= cp.timeMs) && (k.untilMs === null || cp.timeMs < k.untilMs);
      if (!inRange) return fail(`signed by ${k.name} outside the range it may sign in`);
      good++;
    }
    if (!step(good > 0, good > 0 ? `Ed25519 signature by a pinned key (${good} of ${sigs.length})` : 'signed by no pinned key')) {
      return { proven: false, steps };
    }
    return { proven: true, steps };
  } catch (e) {
    return fail(String(e instanceof Error ? e.message : e));
  }
}
