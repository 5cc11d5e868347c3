// The calendar in two browsers (Debian's Chromium driven by playwright-core): a laptop and a
// phone of one user, the phone taken offline, edits on both, back online; both converge and
// show the conflict. Run by crates/flotilla-cli/tests/browser_calendar.rs, which starts the
// server and registers the devices; by hand:
//   FLOTILLA_URL=http://127.0.0.1:4799 LAPTOP_TOKEN=flt_… PHONE_TOKEN=flt_… CAL_USER=ana \
//     node test/calendar.test.mjs
// Prints one line of JSON with what both pages show at the end (the Rust test compares it
// with the server's rows).

import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';

const url = process.env.FLOTILLA_URL;
const user = process.env.CAL_USER ?? 'ana';
const tokens = { laptop: process.env.LAPTOP_TOKEN, phone: process.env.PHONE_TOKEN };
assert(url && tokens.laptop && tokens.phone, 'set FLOTILLA_URL, LAPTOP_TOKEN and PHONE_TOKEN');
const STEP_MS = 30_000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
const log = (...a) => console.error('[calendar test]', ...a);

try {
  const open = async (name) => {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.on('pageerror', (e) => log(`${name} page error:`, e.message));
    page.on('console', (m) => m.type() === 'error' && log(`${name} console:`, m.text()));
    await page.goto(`${url}/calendar/`);
    await page.fill('#connect-token', tokens[name]);
    await page.click('#connect-form button');
    await waitState(page, 'synced');
    assert.equal(await page.textContent('#who'), user, 'the page learns whose calendar it is from the server');
    const storage = await page.textContent('#storage');
    assert.match(storage, /OPFS/, `${name}: the database is not in OPFS: ${storage}`);
    return { context, page };
  };
  const waitState = (page, state) =>
    page.waitForSelector(`#status[data-state="${state}"]`, { timeout: STEP_MS });
  const titles = (page) => page.$$eval('#events li input.title', (els) => els.map((e) => e.value));
  const waitTitles = async (page, want, what) => {
    const deadline = Date.now() + STEP_MS;
    let got;
    while (Date.now() < deadline) {
      got = await titles(page);
      if (JSON.stringify(got) === JSON.stringify(want)) return;
      await page.waitForTimeout(100);
    }
    assert.deepEqual(got, want, what);
  };
  const add = async (page, title, starts, minutes) => {
    await page.fill('#add-title', title);
    await page.fill('#add-starts', starts);
    await page.fill('#add-minutes', String(minutes));
    await page.click('#add-form button');
    await page.waitForSelector(`#events li input.title >> nth=0`, { timeout: STEP_MS });
  };
  const rename = async (page, from, to) => {
    const row = page.locator(`#events li[data-title="${from}"]`);
    await row.locator('input.title').fill(to);
    await row.locator('button.save').click();
  };

  // A token that is not one, and one the server does not know: refused on the form, never kept.
  {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${url}/calendar/`);
    await page.fill('#connect-token', 'flt_garbage');
    await page.click('#connect-form button');
    await page.waitForSelector('#connect-error:has-text("not a device token")', { timeout: STEP_MS });
    await page.fill('#connect-token', `flt_0123456789ab_${'x'.repeat(43)}`);
    await page.click('#connect-form button');
    await page.waitForSelector('#connect-error:has-text("not connected")', { timeout: STEP_MS });
    assert.equal(await page.evaluate(() => localStorage.getItem('flotilla.calendar')), null, 'a refused token is not kept');
    assert.equal(await page.isVisible('#calendar'), false);
    await context.close();
    log('bad tokens refused on the form');
  }

  const laptop = await open('laptop');
  const phone = await open('phone');
  log('both pages connected and synced');

  await add(laptop.page, 'Dentist', '2026-12-01T10:00', 30);
  await waitState(laptop.page, 'synced');
  await waitTitles(phone.page, ['Dentist'], 'the phone shows the laptop\'s meeting');
  log('a meeting made on the laptop reached the phone');

  // The phone loses its network: it keeps working on its own database.
  await phone.context.setOffline(true);
  await rename(phone.page, 'Dentist', 'Dentist (phone)');
  await add(phone.page, 'Flight', '2026-12-02T07:30', 120);
  await waitTitles(phone.page, ['Dentist (phone)', 'Flight'], 'the phone edits offline');
  await phone.page.click('#sync-now');
  await waitState(phone.page, 'offline');
  const offlineText = await phone.page.textContent('#status');
  assert.match(offlineText, /2 changes pending/, `the phone counts its pending changes: ${offlineText}`);
  log('offline on the phone:', offlineText);

  // Meanwhile the laptop renames the same meeting, later.
  await laptop.page.waitForTimeout(20);
  await rename(laptop.page, 'Dentist', 'Dentist (laptop)');
  await waitState(laptop.page, 'synced');
  await waitTitles(laptop.page, ['Dentist (laptop)'], 'the laptop sees its rename');

  // Back online: the phone syncs by itself and both converge.
  await phone.context.setOffline(false);
  await waitTitles(phone.page, ['Dentist (laptop)', 'Flight'], 'the phone converges (the later rename wins)');
  await waitTitles(laptop.page, ['Dentist (laptop)', 'Flight'], 'the laptop converges');
  await waitState(phone.page, 'synced');
  log('both converged');

  // Both show the conflict the server recorded.
  const conflicts = async (page) => {
    const deadline = Date.now() + STEP_MS;
    let got = [];
    while (Date.now() < deadline) {
      got = await page.$$eval('#conflicts li', (els) => els.map((e) => e.textContent));
      if (got.length > 0) return got;
      await page.waitForTimeout(100);
    }
    return got;
  };
  const onPhone = await conflicts(phone.page);
  const onLaptop = await conflicts(laptop.page);
  assert.equal(onPhone.length, 1, `the phone shows one conflict: ${onPhone}`);
  assert.deepEqual(onLaptop, onPhone, 'both show the same conflict');
  assert.match(onPhone[0], /Dentist \(phone\)/);
  assert.match(onPhone[0], /Dentist \(laptop\)/);
  log('the conflict, on both:', onPhone[0]);

  // The application's SQL cannot reach what the device keeps for itself (each of these lost
  // pending edits once: an outside probe's attacks).
  for (const sql of [
    'BEGIN',
    'DELETE FROM _flotilla_outbox',
    "UPDATE _flotilla_device SET cursor = 'junk'",
    'CREATE TRIGGER _flotilla_capture_evil AFTER INSERT ON events BEGIN DELETE FROM _flotilla_outbox; END',
    'CREATE TRIGGER swallow BEFORE INSERT ON _flotilla_outbox BEGIN SELECT RAISE(IGNORE); END',
    'CREATE UNIQUE INDEX one_deps ON _flotilla_outbox (deps)',
    'CREATE TEMP TABLE _flotilla_outbox (x)',
    'CREATE TEMP VIEW _flotilla_device AS SELECT 1',
    'PRAGMA writable_schema = ON',
    'PRAGMA query_only = 1',
    'DROP TRIGGER "_flotilla_capture_events_insert"',
  ]) {
    const refused = await laptop.page.evaluate(async (sql) => {
      try {
        await window.flotillaDevice.query(sql);
        return false;
      } catch {
        return true;
      }
    }, sql);
    assert.ok(refused, `the device's guard refuses: ${sql}`);
  }
  const info = await laptop.page.evaluate(() => window.flotillaDevice.query('PRAGMA table_info(events)'));
  assert.ok(info.length >= 5, 'reading pragmas still works');
  log('the application\'s SQL is kept off the device\'s own tables and settings');

  // Values keep their types and every digit on the way (a 64-bit integer, a REAL that is
  // whole, an infinity, a BLOB, text beyond ASCII), laptop → server → phone.
  const kinds = (page) =>
    page.evaluate(() =>
      window.flotillaDevice.query(
        "SELECT id, typeof(i) AS ti, CAST(i AS TEXT) AS i, typeof(r) AS tr, CAST(r AS TEXT) AS r, " +
          "typeof(b) AS tb, hex(b) AS b, typeof(t) AS tt, t FROM kinds ORDER BY id",
      ),
    );
  await laptop.page.evaluate(() =>
    window.flotillaDevice.execute(
      "INSERT INTO kinds (id, owner, i, r, b, t) VALUES " +
        "('k1', 'ana', 4611686018427387905, 1.0, x'00ff10', 'żółw 🐢'), " +
        "('k2', 'ana', -9223372036854775808, 1e308 * 10, x'', ''), " +
        "('k3', 'ana', NULL, -2.5, NULL, NULL)",
    ),
  );
  await laptop.page.evaluate(() =>
    window.flotillaDevice.execute("INSERT INTO kinds (id, owner, r) VALUES ('k4', 'ana', ?1)", [1e19]),
  );
  await laptop.page.click('#sync-now');
  const wantKinds = await kinds(laptop.page);
  assert.equal(wantKinds.length, 6);
  assert.deepEqual(
    wantKinds.map((k) => [k.id, k.ti, k.tr, k.tb, k.tt]),
    [
      ['k1', 'integer', 'real', 'blob', 'text'],
      ['k2', 'integer', 'real', 'blob', 'text'],
      ['k3', 'null', 'real', 'null', 'null'],
      ['k4', 'null', 'real', 'null', 'null'],
      ['s1', 'null', 'real', 'null', 'null'],
      ['s2', 'null', 'real', 'null', 'null'],
    ],
  );
  {
    const deadline = Date.now() + STEP_MS;
    let got = [];
    while (Date.now() < deadline) {
      got = await kinds(phone.page);
      if (got.length === 6) break;
      await phone.page.waitForTimeout(100);
    }
    assert.deepEqual(got, wantKinds, 'the phone holds the values the laptop wrote, typed alike');
  }
  log('values kept their types and digits laptop → server → phone');

  // A row outside the shape (another user's) is refused by the server and undone here.
  await laptop.page.evaluate(() =>
    window.flotillaDevice.execute(
      "INSERT INTO events (id, owner, title, starts) VALUES ('sneaky', 'bob', 'Sneaky', '2026-12-05T10:00:00')",
    ),
  );
  await laptop.page.click('#sync-now');
  {
    const deadline = Date.now() + STEP_MS;
    let rejected = [];
    while (Date.now() < deadline) {
      rejected = await laptop.page.evaluate(() => window.flotillaDevice.rejected());
      if (rejected.length > 0) break;
      await laptop.page.waitForTimeout(100);
    }
    assert.equal(rejected.length, 1, 'the laptop keeps the refused transaction');
    assert.equal(rejected[0].code, 'outside_shape', JSON.stringify(rejected[0]));
    const left = await laptop.page.evaluate(() =>
      window.flotillaDevice.query("SELECT count(*) AS n FROM events WHERE id = 'sneaky'"),
    );
    assert.equal(left[0].n, 0, 'the refused row is undone on the laptop');
    await laptop.page.waitForSelector('#status:has-text("1 rejected")', { timeout: STEP_MS });
  }
  log('a row outside the shape was refused and undone');

  // The page and its data are the browser's own: with no network at all, a reload opens the
  // calendar (the service worker keeps the page's files) and shows the meetings (OPFS).
  await laptop.page.evaluate(() => navigator.serviceWorker.ready);
  await laptop.page.waitForFunction(() => navigator.serviceWorker.controller !== null, null, { timeout: STEP_MS });
  await laptop.context.setOffline(true);
  await laptop.page.reload();
  await waitTitles(laptop.page, ['Dentist (laptop)', 'Flight'], 'the laptop\'s calendar opens offline');
  await waitState(laptop.page, 'offline');
  log('a reload with no network opens the calendar and shows the meetings');

  console.log(
    JSON.stringify({
      laptop: await titles(laptop.page),
      phone: await titles(phone.page),
      conflict: onPhone[0],
      kinds: wantKinds,
    }),
  );
} finally {
  await browser.close();
}
