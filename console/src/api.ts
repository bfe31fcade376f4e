// The API client: every call an ordinary API call with the credential typed at sign-in, held
// in this module's memory only (never a cookie, never storage), so closing the tab forgets it.

let credential: string | null = null;

export class ApiError extends Error {
  constructor(
    public status: number,
    message: string,
  ) {
    super(message);
  }
}

/** Called when the server says the credential is no good (401): back to sign-in. */
let onUnauthorized: () => void = () => {};

export function setCredential(c: string | null, unauthorized?: () => void) {
  credential = c;
  if (unauthorized) onUnauthorized = unauthorized;
}

async function call(method: string, path: string, body?: unknown, accept?: string): Promise<Response> {
  const headers: Record<string, string> = {};
  if (credential) headers['Authorization'] = `Bearer ${credential}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (accept) headers['Accept'] = accept;
  const r = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'omit',
    cache: 'no-store',
  });
  if (!r.ok) {
    let msg = `${r.status} ${r.statusText}`;
    try {
      const j = await r.json();
      if (j && typeof j.error === 'string') msg = j.error;
    } catch {
      /* not JSON */
    }
    if (r.status === 401) onUnauthorized();
    throw new ApiError(r.status, msg);
  }
  return r;
}

export async function getJson<T>(path: string): Promise<T> {
  return (await call('GET', path)).json() as Promise<T>;
}

export async function postJson<T>(path: string, body: unknown): Promise<T> {
  return (await call('POST', path, body)).json() as Promise<T>;
}

export async function getText(path: string): Promise<string> {
  return (await call('GET', path)).text();
}

export type Row = Record<string, unknown>;

/** SQL over the store (read-only; capped in rows, time and memory by the server). */
export async function query(sql: string): Promise<Row[]> {
  return postJson<Row[]>('/v1/query', { sql, format: 'json' });
}

/** The same query as a file to download (csv or json), as the server formats it. */
export async function queryBlob(sql: string, format: 'csv' | 'json'): Promise<Blob> {
  return (await call('POST', '/v1/query', { sql, format })).blob();
}

/** A SQL string literal: quotes doubled, so a value can never end the literal. */
export function lit(s: string): string {
  return `'${s.replaceAll("'", "''")}'`;
}

export type Severity = 'info' | 'low' | 'medium' | 'high' | 'critical';
export type Status = 'open' | 'acknowledged' | 'resolved' | 'suppressed';

export interface Evidence {
  log: string;
  index: number;
  leaf_hash: string;
  event_time_ns: number;
  event_id?: string;
}

export interface Alert {
  alert_id: string;
  revision: number;
  rule_id: string;
  rule_version: number;
  rule_kind: string;
  title: string;
  severity: Severity;
  status: Status;
  status_by?: string;
  status_at_ns?: number;
  status_note?: string;
  group_key: Record<string, string | null>;
  first_event_ns: number;
  last_event_ns: number;
  detected_ns: number;
  event_count: number;
  detail: string[];
  evidence: Evidence[];
  incident_id?: string;
  incident_subject?: string;
}

export interface AlertsPage {
  alerts: Alert[];
  total: number;
  next_offset: number | null;
}

export interface Caller {
  principal: string;
  roles: string[];
}

export interface RuleInfo {
  id: string;
  version: number;
  title: string;
  severity: Severity;
  kind: string;
  description: string;
  source: string;
  definition: string | null;
}

export function time(ns: number): string {
  return new Date(ns / 1e6).toISOString().replace('T', ' ').replace('Z', '');
}
