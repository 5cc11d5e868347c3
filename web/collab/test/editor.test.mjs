// The editor page in real browsers (Debian's Chromium driven by playwright-core) and a stock
// Yjs client in Node, on one document: two pages type at once and converge; one page goes
// offline, both edit, it comes back and the edits merge; a stock `y-websocket` provider
// (unmodified, from npm) edits too and everyone sees it; presence shows the other people; a
// page on a follower shows the document live and read-only.
// Run by crates/flotilla-cli/tests/browser_editor.rs, which starts the server; by hand:
//   FLOTILLA_URL=http://127.0.0.1:4790 FOLLOWER_URL=http://127.0.0.1:4791 DOC=notes/1/body \
//     TOKEN=flt_… READ_TOKEN=flt_… \
//     node test/editor.test.mjs
// Prints one line of JSON: the text every client ended with.

import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import * as Y from 'yjs';
import { WebsocketProvider } from 'y-websocket';
import WebSocket from 'ws';

const url = process.env.FLOTILLA_URL;
const followerUrl = process.env.FOLLOWER_URL;
const docAddress = process.env.DOC ?? 'notes/1/body';
const token = process.env.TOKEN;
const readToken = process.env.READ_TOKEN;
assert(url && followerUrl && token && readToken,
  'set FLOTILLA_URL, FOLLOWER_URL, TOKEN (write role) and READ_TOKEN');
const STEP_MS = 30_000;
const log = (...a) => console.error('[editor test]', ...a);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox'],
});

/** Polls `f` (bounded) until it returns a truthy value. */
async function until(what, f) {
  const deadline = Date.now() + STEP_MS;
  let last;
  while (Date.now() < deadline) {
    last = await f();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

const textOf = (page) => page.evaluate(() => window.flotillaEditor.text.toString());
const viewOf = (page) => page.evaluate(() => window.flotillaEditor.view.state.doc.toString());

try {
  const open = async (name, tok, at = url) => {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.on('pageerror', (e) => log(`${name} page error:`, e.message));
    page.on('console', (m) => m.type() === 'error' && log(`${name} console:`, m.text()));
    await page.goto(`${at}/edit/${docAddress}?name=${name}&token=${tok}`);
    await page.waitForSelector('#status[data-state="connected"]', { timeout: STEP_MS });
    assert(!page.url().includes('token='), 'the token leaves the address bar');
    return { context, page };
  };
  const ana = await open('Ana', token);
  const ben = await open('Ben', token);
  const initial = await until('the row text in both pages', async () => {
    const [a, b] = [await textOf(ana.page), await textOf(ben.page)];
    return a === 'hello' && b === 'hello' && a;
  });
  assert.equal(await viewOf(ana.page), initial, 'the editor shows the document');
  log('both pages show', JSON.stringify(initial));

  // Presence: each page lists both people.
  await until('both people on Ana\'s page', async () =>
    (await ana.page.textContent('#people')).includes('Ben') && (await ana.page.textContent('#people')).includes('Ana (you)'));

  // Both type at once, keystroke by keystroke, through the keyboard.
  const typeAt = async (page, where, s) => {
    await page.click('.cm-content');
    await page.keyboard.press(where === 'end' ? 'Control+End' : 'Control+Home');
    await page.keyboard.type(s, { delay: 5 });
  };
  await Promise.all([typeAt(ana.page, 'end', ' from ana'), typeAt(ben.page, 'start', 'ben says ')]);
  const together = await until('the pages to converge', async () => {
    const [a, b] = [await textOf(ana.page), await textOf(ben.page)];
    return a === b && a.includes(' from ana') && a.includes('ben says ') && a;
  });
  assert.equal(together, 'ben says hello from ana');
  assert.equal(await viewOf(ben.page), together, 'Ben\'s editor shows the merged text');
  // Ben's cursor is drawn on Ana's page.
  await ana.page.waitForSelector('.cm-ySelectionCaret', { timeout: STEP_MS });
  log('converged:', JSON.stringify(together));

  // A stock Yjs client from npm, unmodified, on the same document.
  const ydoc = new Y.Doc();
  const provider = new WebsocketProvider(`${url.replace('http', 'ws')}/v1/collab`, docAddress, ydoc, {
    WebSocketPolyfill: WebSocket,
    params: { token },
  });
  await until('the stock client to sync', () => ydoc.getText('text').toString() === together);
  ydoc.getText('text').insert(0, '[stock] ');
  await until('the pages to see the stock client\'s edit', async () =>
    (await textOf(ana.page)).startsWith('[stock] ') && (await textOf(ben.page)).startsWith('[stock] '));
  log('a stock y-websocket client edits too');

  // Ben goes offline; both edit; Ben comes back and the edits merge.
  await ben.context.setOffline(true);
  await ben.page.waitForSelector('#status[data-state="offline"]', { timeout: STEP_MS });
  await typeAt(ben.page, 'end', ' +offline');
  await typeAt(ana.page, 'start', 'online+ ');
  await ana.page.waitForTimeout(500);
  const anaWhileBenAway = await textOf(ana.page);
  log('while Ben is offline, Ana sees', JSON.stringify(anaWhileBenAway));
  await ben.context.setOffline(false);
  const merged = await until('the offline edits to merge', async () => {
    const [a, b, s] = [await textOf(ana.page), await textOf(ben.page), ydoc.getText('text').toString()];
    return a === b && b === s && a.includes(' +offline') && a.includes('online+ ') && a;
  });
  await ben.page.waitForSelector('#status[data-state="connected"]', { timeout: STEP_MS });
  log('merged after the reconnect:', JSON.stringify(merged));

  // A reader's page follows the document; its edits are not taken.
  const reader = await open('Reader', readToken);
  await until('the reader to see the text', async () => (await textOf(reader.page)) === merged);
  await reader.page.waitForSelector('#status[data-readonly]', { timeout: STEP_MS });
  await typeAt(reader.page, 'end', ' reader-edit');
  await ana.page.waitForTimeout(500);
  assert.equal(await textOf(reader.page), merged, 'the read-only editor took input');
  assert.equal(await textOf(ana.page), merged, 'a read token\'s edit reached another editor');
  // And it still follows the others' edits live.
  await typeAt(ana.page, 'end', '!');
  await until('the reader to follow', async () => (await textOf(reader.page)) === `${merged}!`);

  // A page on a follower (even with a write token) shows the document as the leader stores
  // it, live, read-only: the follower says edits are made on the leader.
  const far = await open('Far', token, followerUrl);
  await until('the follower\'s page to show the text', async () => (await textOf(far.page)) === `${merged}!`);
  await far.page.waitForSelector('#status[data-readonly]', { timeout: STEP_MS });
  assert.match(await far.page.textContent('#status'), /follower/);
  await typeAt(far.page, 'end', ' far-edit');
  await typeAt(ana.page, 'end', '?');
  await until('the follower\'s page to follow', async () => (await textOf(far.page)) === `${merged}!?`);
  assert.equal(await textOf(ana.page), `${merged}!?`, 'an edit on a follower reached the leader');
  await far.context.close();
  log('a follower\'s page follows live, read-only');

  // Lock-based mode: Ana locks; Ben's page turns read-only and his typing is not taken; Ana
  // edits; she unlocks and Ben's page edits again.
  await ana.page.click('#lock');
  await ben.page.waitForSelector('#status[data-readonly]', { timeout: STEP_MS });
  assert.match(await ben.page.textContent('#status'), /locked by Ana/);
  await typeAt(ben.page, 'end', ' ben-while-locked');
  await typeAt(ana.page, 'end', '#');
  const locked = `${merged}!?#`;
  await until('Ben to see Ana\'s edit under her lock', async () => (await textOf(ben.page)) === locked);
  assert.equal(await textOf(ana.page), locked, 'an edit made without the lock was taken');
  await ana.page.click('#lock');
  await ben.page.waitForFunction(() => !('readonly' in document.getElementById('status').dataset), null, { timeout: STEP_MS });
  await typeAt(ben.page, 'end', '$');
  const end = `${locked}$`;
  await until('Ana to see Ben\'s edit after the unlock', async () => (await textOf(ana.page)) === end);
  log('lock-based mode: only the holder edited');

  provider.destroy();
  console.log(JSON.stringify({ text: end, while_offline: anaWhileBenAway }));
} catch (e) {
  log('FAILED:', e.stack ?? e);
  process.exitCode = 1;
} finally {
  await browser.close();
  // The stock provider's reconnect timers would keep Node running.
  process.exit();
}
