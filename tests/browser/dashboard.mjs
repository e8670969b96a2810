// The dashboard in Debian's headless Chromium, driven by playwright-core:
//   node dashboard.mjs BASE_URL TOKEN REPOSITORY PR_NUMBER PR_HEAD SCREENSHOT
// The daemon is already serving BASE_URL with the merge queue of REPOSITORY
// configured and both workflows running. The script opens the dashboard, then
// makes things happen through the REST API (a pull request through the queue,
// a transaction that breaches its client's limit) and checks that the page
// shows each of them without being reloaded. Exits non-zero on the first
// failed check, printing what it saw.
import { chromium } from 'playwright-core';

const [base, token, repository, prNumber, prHead, screenshot] = process.argv.slice(2);
const timeout = 30_000;
const figures = {};

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

async function post(path, body) {
  const res = await fetch(base + path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
    body: JSON.stringify(body),
  });
  check(res.status === 202, `POST ${path} answered ${res.status}: ${await res.text()}`);
  return Date.now();
}

/// Waits until `predicate` holds in the page; returns how long after `since` it did.
async function shows(page, what, predicate, arg, since) {
  try {
    await page.waitForFunction(predicate, arg, { timeout, polling: 50 });
  } catch (e) {
    const text = await page.locator('main').innerText().catch(() => '');
    throw new Error(`the dashboard never showed ${what}:\n${text.slice(0, 3000)}`);
  }
  return Date.now() - since;
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  page.on('response', (r) => { if (r.status() >= 400) errors.push(`${r.status()} for ${r.url()}`); });

  // An event stream with a wrong token is refused, with a JSON error.
  const refused = await fetch(`${base}/api/v1/dashboard/events?access_token=wrong`);
  check(refused.status === 403, `a wrong stream token answered ${refused.status}`);
  check((await refused.json()).error.code === 'forbidden', 'the refusal is a JSON error');

  await page.goto(`${base}/?token=${encodeURIComponent(token)}`);
  await shows(page, 'a ready runtime', () => document.querySelector('[data-testid=health]')?.textContent === 'ready', null, Date.now());
  await page.evaluate(() => { window.__sameDocument = true; });
  const tasks = await page.locator('[data-testid=task]').count();
  check(tasks > 0, 'the runtime table lists tasks');

  // A pull request through the queue: seen queued or building, then merged.
  let since = await post('/api/v1/pull-requests/opened', {
    repository, number: Number(prNumber), title: 'live dashboard', head_sha: prHead, base_branch: 'main',
  });
  await post('/api/v1/pull-requests/approved', { repository, number: Number(prNumber) });
  since = await post('/api/v1/queues/enqueue', { repository, branch: 'main', number: Number(prNumber) });
  figures.queued_ms = await shows(page, `#${prNumber} in the queue`,
    (n) => document.querySelector(`[data-testid=queue-item][data-number="${n}"]`) !== null, prNumber, since);
  figures.building_ms = await shows(page, `#${prNumber} building with a progress bar`,
    (n) => document.querySelector(`[data-testid=queue-item][data-number="${n}"] .progress`) !== null, prNumber, since);
  figures.merged_ms = await shows(page, `#${prNumber} merged`,
    (n) => [...document.querySelectorAll('[data-testid=outcome]')].some((e) => e.textContent.includes(`#${n} merged`)),
    prNumber, since);

  // A transaction that takes a client below its floor: the breach, the
  // client's negative headroom and the reverting saga appear.
  const today = new Date().toISOString().slice(0, 10);
  const client = `client-live-${Date.now()}`;
  const account = `${client}-acc`;
  await post('/api/v1/accounts', { account_id: account, client_id: client, currency: 'USD', request_id: `${account}-open` });
  await post('/api/v1/limits', { client_id: client, currency: 'USD', floor_today_minor: '-100000', floor_projected_minor: '-100000', request_id: `${client}-limit` });
  since = await post('/api/v1/transactions', { transaction_id: `${client}-t1`, account_id: account, amount_minor: '-250000', currency: 'USD', value_date: today });
  figures.breach_ms = await shows(page, `the breach of ${client}`,
    (c) => [...document.querySelectorAll('[data-testid=breach]')].some((e) => e.textContent.includes(c)), client, since);
  await shows(page, `${client} in the clients table`,
    (c) => document.querySelector(`[data-testid=client][data-client="${c}"]`) !== null, client, since);
  await shows(page, `the saga reverting ${client}-t1`,
    (t) => [...document.querySelectorAll('[data-testid=saga]')].some((e) => e.textContent.includes(t)), `${client}-t1`, since);

  // Charts fill in as the feed goes on.
  await shows(page, 'an events/s chart with several points',
    () => Number(document.querySelector('#chart-events')?.dataset.points || 0) >= 3, null, Date.now());

  check(await page.evaluate(() => window.__sameDocument === true), 'the page was never reloaded');
  check(await page.evaluate(() => performance.getEntriesByType('navigation').length === 1), 'one navigation only');
  check(errors.length === 0, `no script errors: ${errors.join('; ')}`);
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`figures: ${JSON.stringify(figures)}`);
} finally {
  await browser.close();
}
