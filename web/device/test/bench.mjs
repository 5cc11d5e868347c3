// The browser device client's figures (Chromium through playwright-core): N changes made
// offline in one browser (each its own local transaction) reach a second browser — local
// write rate, push, pull, end to end, bytes per change. Run by the ignored test
// `browser_device_figures` in crates/flotilla-cli/tests/browser_calendar.rs:
//   cargo test --release -p flotilla-cli --test browser_calendar -- --ignored --nocapture
// Prints one line of JSON.

import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';

const url = process.env.FLOTILLA_URL;
const tokens = [process.env.LAPTOP_TOKEN, process.env.PHONE_TOKEN];
const n = Number(process.env.CHANGES ?? 10000);
assert(url && tokens[0] && tokens[1], 'set FLOTILLA_URL, LAPTOP_TOKEN and PHONE_TOKEN');

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
try {
  const open = async (token) => {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${url}/calendar/`);
    await page.fill('#connect-token', token);
    await page.click('#connect-form button');
    await page.waitForSelector('#status[data-state="synced"]', { timeout: 60_000 });
    return { context, page };
  };
  const a = await open(tokens[0]);
  const b = await open(tokens[1]);
  // Syncs only when timed.
  for (const x of [a, b]) await x.page.evaluate(() => window.flotillaDevice.stopBackgroundSync());
  await a.context.setOffline(true);
  // Local writes: each its own transaction through the worker.
  const local = await a.page.evaluate(async (n) => {
    const d = window.flotillaDevice;
    const t0 = performance.now();
    for (let i = 0; i < n; i++) {
      await d.execute('INSERT INTO events (id, owner, title, starts, minutes) VALUES (?1, ?2, ?3, ?4, ?5)', [
        `bench-${i}`,
        'ana',
        `Meeting ${i}`,
        '2026-12-01T10:00:00',
        30,
      ]);
    }
    return performance.now() - t0;
  }, n);
  await a.context.setOffline(false);
  const timed = async (page, f) => page.evaluate(f);
  const push = await timed(a.page, async () => {
    const t0 = performance.now();
    let r = { bytesSent: 0, bytesReceived: 0 };
    for (let i = 0; i < 100; i++) {
      try {
        const x = await window.flotillaDevice.sync();
        r = { bytesSent: r.bytesSent + x.bytesSent, bytesReceived: r.bytesReceived + x.bytesReceived };
        const s = await window.flotillaDevice.status();
        if (s.pending === 0) break;
      } catch {
        await new Promise((res) => setTimeout(res, 50));
      }
    }
    return { ms: performance.now() - t0, ...r };
  });
  const pull = await timed(b.page, async () => {
    const t0 = performance.now();
    let got = 0;
    let bytes = 0;
    for (let i = 0; i < 100 && got < 10000000; i++) {
      const x = await window.flotillaDevice.sync();
      bytes += x.bytesReceived;
      got = (await window.flotillaDevice.query("SELECT count(*) AS n FROM events WHERE id LIKE 'bench-%'"))[0].n;
      if (x.pulled === 0) break;
    }
    return { ms: performance.now() - t0, rows: got, bytes };
  });
  assert.equal(pull.rows, n, 'the second browser has every change');
  console.log(
    JSON.stringify({
      changes: n,
      local_writes_per_s: Math.round((n / local) * 1000),
      push_ms: Math.round(push.ms),
      pull_ms: Math.round(pull.ms),
      end_to_end_ms: Math.round(push.ms + pull.ms),
      push_bytes_per_change: Math.round(push.bytesSent / n),
      pull_bytes_per_change: Math.round(pull.bytes / n),
    }),
  );
} finally {
  await browser.close();
}
