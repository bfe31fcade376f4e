// The console end to end in a real browser (Debian's chromium, driven by playwright-core),
// against `vigil serve` started by the Rust test `console_browser` (tests/console_browser.rs),
// which passes, in the environment:
//   VIGIL_API            http://127.0.0.1:PORT of vigil serve
//   VIGIL_ANALYST_KEY    an API key with roles analyst + reader
//   VIGIL_READER_KEY     an API key with role reader only
//   VIGIL_PINNED         a file: the key registry to pin (what `vigil keys show` prints)
//   VIGIL_SIGNAL         a file this script creates once signed in: the test then injects the attack
//   VIGIL_ARTIFACTS      a directory for screenshots and the downloaded CSV
//   VIGIL_EXPECT_RULE    the rule the injected attack fires
// Prints one JSON line of results and exits 0 when every step held; any failure throws.
import { chromium } from 'playwright-core';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const api = env('VIGIL_API');
const analystKey = env('VIGIL_ANALYST_KEY');
const readerKey = env('VIGIL_READER_KEY');
const pinned = readFileSync(env('VIGIL_PINNED'), 'utf8');
const artifacts = env('VIGIL_ARTIFACTS');
mkdirSync(artifacts, { recursive: true });
const results = {};
const step = (name, detail = true) => {
  results[name] = detail;
  console.error(`[e2e] ${name}: ${typeof detail === 'string' ? detail : JSON.stringify(detail)}`);
};
function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

const browser = await chromium.launch({
  executablePath: process.env.VIGIL_CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run', '--disable-quic', '--disable-sync'],
});
const shot = async (page, name) => page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });

// The policy refuses anything not from Vigil: any violation fails the run.
const violations = [];
async function newPage(ctx) {
  const page = await ctx.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource: the server responded with a status of 403/.test(m.text())) violations.push(m.text());
  });
  page.on('pageerror', (e) => violations.push(String(e)));
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`));
  });
  return page;
}

async function signIn(page, key, pin) {
  const res = await page.goto(api + '/');
  const csp = res.headers()['content-security-policy'] ?? '';
  check(csp.includes("default-src 'none'") && csp.includes("script-src 'self'"), `CSP on /: ${csp}`);
  await page.fill('#credential', key);
  if (pin !== undefined) await page.fill('#pinned', pin);
  await page.click('#sign-in');
  await page.waitForSelector('#who', { timeout: 15000 });
}

try {
  // — An analyst signs in; the page never reloads from here on (the marker survives).
  const ctx = await browser.newContext({ acceptDownloads: true, viewport: { width: 1400, height: 1000 } });
  const page = await newPage(ctx);
  await page.goto(api + '/');
  await shot(page, '01-sign-in');
  await signIn(page, analystKey, pinned);
  step('signed in', await page.textContent('#who'));
  await page.evaluate(() => (window.__vigilMarker = 'same page'));
  await page.waitForSelector('#tile-rate');
  await page.waitForFunction(() => document.querySelectorAll('#checkpoints tbody tr').length > 0, null, { timeout: 30000 });
  await shot(page, '02-overview');
  step('overview', { checkpoints: await page.locator('#checkpoints tbody tr').count() });

  // — The alerts page is open when the attack is injected: its alert must appear by itself.
  await page.click('a[href="#/alerts"]');
  await page.waitForSelector('#alerts');
  await page.waitForSelector('#alerts-total');
  const before = await page.locator('#alerts tbody tr').count();
  writeFileSync(env('VIGIL_SIGNAL'), 'signed in\n');
  const row = page.locator(`#alerts tbody tr.new[data-rule="${env('VIGIL_EXPECT_RULE')}"]`).first();
  await row.waitFor({ timeout: 120000 });
  check((await page.evaluate(() => window.__vigilMarker)) === 'same page', 'the page was reloaded');
  const ruleId = await row.getAttribute('data-rule');
  step('alert appeared without a reload', { before, rule: ruleId });
  await shot(page, '03-alerts');

  // — Open it; Prove its evidence in the page.
  await row.locator('a').click();
  await page.waitForSelector('#prove');
  await page.waitForSelector('#revisions tbody tr');
  const alertUrl = page.url();
  const alertId = decodeURIComponent(alertUrl.split('#/alerts/')[1]);
  await page.click('#prove');
  await page.waitForFunction(() => /^(proven|not proven)/.test(document.querySelector('#prove-verdict')?.textContent ?? ''), null, { timeout: 60000 });
  const verdict = await page.textContent('#prove-verdict');
  await page.locator('#evidence details').first().evaluate((d) => (d.open = true));
  await shot(page, '04-alert-proven');
  check(verdict.startsWith('proven:'), `verdict on the real bundles: ${verdict}; steps: ${await page.locator('#evidence').innerText()}`);
  step('proven in the page', verdict);

  // — A test double serves tampered bundles: each must show "not proven".
  const tampers = {
    'record value edited': (b) => {
      const v = Buffer.from(b.record.value ?? '', 'base64');
      v[Math.floor(v.length / 2)] ^= 1;
      b.record.value = v.toString('base64');
    },
    'proof hash edited': (b) => {
      if (b.proof.length === 0) b.proof.push('00'.repeat(32));
      else b.proof[0] = (b.proof[0][0] === '0' ? '1' : '0') + b.proof[0].slice(1);
    },
    'checkpoint root edited': (b) => {
      const lines = b.checkpoint.split('\n');
      const root = Buffer.from(lines[2], 'base64');
      root[0] ^= 1;
      lines[2] = root.toString('base64');
      b.checkpoint = lines.join('\n');
    },
    'signature edited': (b) => {
      const lines = b.checkpoint.split('\n');
      const i = lines.findIndex((l) => l.startsWith('\u2014 '));
      const [dash, name, sig] = lines[i].split(' ');
      const s = Buffer.from(sig, 'base64');
      s[s.length - 1] ^= 1;
      lines[i] = [dash, name, s.toString('base64')].join(' ');
      b.checkpoint = lines.join('\n');
    },
    'leaf index moved': (b) => {
      b.leaf_index += 1;
    },
  };
  const refused = {};
  for (const [what, tamper] of Object.entries(tampers)) {
    await page.route('**/v1/proofs/inclusion**', async (route) => {
      const res = await route.fetch();
      const b = await res.json();
      tamper(b);
      await route.fulfill({ response: res, json: b });
    });
    await page.click('#prove');
    await page.waitForFunction(() => /^(proven|not proven)/.test(document.querySelector('#prove-verdict')?.textContent ?? ''), null, { timeout: 60000 });
    const v = await page.textContent('#prove-verdict');
    const why = await page.locator('#evidence li.bad').first().textContent();
    check(v === 'not proven', `${what}: ${v}`);
    refused[what] = why;
    await page.unroute('**/v1/proofs/inclusion**');
  }
  await page.locator('#evidence details').first().evaluate((d) => (d.open = true));
  await shot(page, '05-alert-tampered');
  step('tampered bundles not proven', refused);

  // — Acknowledge it with a note.
  await page.fill('.actions .note', 'e2e: looked at it');
  await page.click('#action-ack');
  await page.waitForFunction(() => document.querySelector('#alert-status')?.textContent === 'acknowledged', null, { timeout: 30000 });
  await page.waitForFunction(() => document.querySelectorAll('#revisions tbody tr').length >= 2);
  await shot(page, '06-alert-acknowledged');
  step('acknowledged', alertId);

  // — SQL: completion knows the tables; the acknowledgement is in Vigil's own log; CSV download.
  await page.click('a[href="#/sql"]');
  await page.waitForSelector('#sql-editor');
  await page.waitForFunction(() => document.querySelectorAll('#sql-schema details').length > 0, null, { timeout: 30000 });
  await page.fill('#sql-editor', '');
  await page.locator('#sql-editor').pressSequentially('SELECT * FROM eve');
  await page.waitForSelector('#sql-suggest');
  check((await page.textContent('#sql-suggest')).includes('events'), 'completion offers events');
  const sql = `SELECT event_time, caller_principal, action, decision, status_code FROM events WHERE callee_service = 'vigil-api' AND action = 'POST /v1/alerts/${alertId.replaceAll("'", "''")}/ack' ORDER BY event_time`;
  let ownLog = 0;
  for (let i = 0; i < 30 && ownLog === 0; i++) {
    await page.fill('#sql-editor', sql);
    await page.click('#sql-run');
    await page.waitForSelector('#sql-count, #sql-error');
    ownLog = await page.locator('#sql-results tbody tr').count();
    if (ownLog === 0) await page.waitForTimeout(1000);
  }
  check(ownLog >= 1, 'the acknowledgement is in vigil.api');
  const text = await page.locator('#sql-results').innerText();
  check(text.includes('key:e2e-analyst'), `the own log names the analyst: ${text}`);
  await shot(page, '07-sql-own-log');
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#sql-csv')]);
  const csvPath = join(artifacts, 'own-log.csv');
  await download.saveAs(csvPath);
  const csv = readFileSync(csvPath, 'utf8');
  check(csv.split('\n')[0].includes('caller_principal') && csv.includes(`/v1/alerts/${alertId}/ack`), `CSV: ${csv}`);
  step('own log and CSV', { rows: ownLog, csv_bytes: csv.length });

  // — Events: a pivot on a caller.
  await page.click('a[href="#/events"]');
  await page.waitForSelector('#events tbody tr', { timeout: 30000 });
  const pivot = page.locator('#events .pivot-callee').first();
  const callee = await pivot.textContent();
  await pivot.click();
  await page.waitForFunction((c) => {
    const cells = [...document.querySelectorAll('#events tbody tr td:nth-child(6)')];
    return cells.length > 0 && cells.every((td) => td.textContent === c);
  }, callee, { timeout: 30000 });
  await shot(page, '08-events-pivot');
  step('pivot on callee', callee);
  check((await page.evaluate(() => window.__vigilMarker)) === 'same page', 'the page was reloaded');

  // — Back on the overview: the alerts by severity over time and by rule, the rate measured.
  await page.click('a[href="#/"]');
  await page.waitForSelector('#alerts-chart', { timeout: 30000 });
  await page.waitForFunction(() => document.querySelectorAll('#by-rule tbody tr').length > 0, null, { timeout: 30000 });
  await page.waitForFunction(() => !/…/.test(document.querySelector('#tile-rate .value')?.textContent ?? '…'), null, { timeout: 30000 });
  await shot(page, '10-overview-alerts');
  step('overview charts', { rules: await page.locator('#by-rule tbody tr').count(), rate: await page.textContent('#tile-rate .value') });

  // — A reader: no lifecycle buttons; forcing the call is refused by the server.
  const rctx = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const rpage = await newPage(rctx);
  await signIn(rpage, readerKey, pinned);
  await rpage.evaluate((u) => (location.hash = u.split('#')[1]), alertUrl);
  await rpage.waitForSelector('#prove');
  check((await rpage.locator('#action-ack').count()) === 0, 'a reader sees no Acknowledge');
  const forced = await rpage.evaluate(
    async ([id, key]) => (await fetch(`/v1/alerts/${encodeURIComponent(id)}/ack`, { method: 'POST', headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' }, body: '{}' })).status,
    [alertId, readerKey],
  );
  check(forced === 403, `a reader's forced acknowledge: ${forced}`);
  await shot(rpage, '09-reader-alert');
  step('reader cannot acknowledge', { hidden: true, forced_status: forced });

  check(violations.length === 0, `browser errors: ${violations.join('; ')}`);
  step('no CSP violation or page error', true);
  console.log(JSON.stringify({ ok: true, alert_id: alertId, rule: ruleId, results }));
} catch (e) {
  for (const p of browser.contexts().flatMap((c) => c.pages())) {
    await p.screenshot({ path: join(artifacts, `failure-${Date.now()}.png`), fullPage: true }).catch(() => {});
  }
  console.log(JSON.stringify({ ok: false, error: String(e?.stack ?? e), results, violations }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
