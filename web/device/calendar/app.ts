// The calendar page: meetings kept in the browser's own SQLite database and synced with the
// Flotilla server by the device client. Works with the network cut; syncs when it is back.

import { DeviceCallError, DeviceClient, type Status } from '../src/client';

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;
const KEY = 'flotilla.calendar';

interface Saved {
  user: string;
  token: string;
}

interface Event {
  id: string;
  title: string;
  starts: string;
  minutes: number;
}

let device: DeviceClient | null = null;
let user = '';

function saved(): Saved | null {
  try {
    const s = JSON.parse(localStorage.getItem(KEY) ?? 'null') as Saved | null;
    return s && s.user && s.token ? s : null;
  } catch {
    return null;
  }
}

function showError(e: unknown): void {
  $('error').textContent = e ? (e instanceof Error ? e.message : String(e)) : '';
}

async function hasEvents(): Promise<boolean> {
  const n = await device!.query<{ n: number }>("SELECT count(*) AS n FROM sqlite_schema WHERE type = 'table' AND name = 'events'");
  return n[0].n > 0;
}

async function render(): Promise<void> {
  if (!device) return;
  const status: Status = await device.status();
  const el = $('status');
  el.dataset.state = status.state;
  el.textContent = status.text;
  ($('work-offline') as HTMLInputElement).checked = status.offline;
  const list = $('events');
  const events = (await hasEvents())
    ? await device.query<Event>('SELECT id, title, starts, minutes FROM events WHERE owner = ?1 ORDER BY starts, id', [user])
    : [];
  // A row whose title is being edited (changed and not saved yet) stays as it is: a sync in
  // the background must not wipe what someone is typing.
  const editing = new Map<string, HTMLLIElement>();
  for (const li of Array.from(list.querySelectorAll<HTMLLIElement>('li'))) {
    const input = li.querySelector<HTMLInputElement>('input.title');
    if (li.dataset.id && input && input.value !== li.dataset.title) editing.set(li.dataset.id, li);
  }
  list.replaceChildren(
    ...events.map((ev) => {
      const kept = editing.get(String(ev.id));
      if (kept) return kept;
      const li = document.createElement('li');
      li.dataset.id = ev.id;
      li.dataset.title = String(ev.title ?? '');
      const when = document.createElement('span');
      when.className = 'when';
      // Any device of the user may have written anything into a row: shown as text, whatever it is.
      when.textContent = `${String(ev.starts ?? '').replace('T', ' ')} · ${String(ev.minutes ?? '')} min`;
      const title = document.createElement('input');
      title.className = 'title';
      title.value = String(ev.title ?? '');
      title.setAttribute('aria-label', 'title');
      const save = document.createElement('button');
      save.className = 'save';
      save.textContent = 'Rename';
      save.onclick = () => {
        // Saved: no longer an edit in progress (the next render shows the database's title).
        li.dataset.title = title.value;
        void act(() => device!.execute('UPDATE events SET title = ?1 WHERE id = ?2', [title.value, ev.id]));
      };
      const del = document.createElement('button');
      del.className = 'delete';
      del.textContent = 'Delete';
      del.onclick = () => act(() => device!.execute('DELETE FROM events WHERE id = ?1', [ev.id]));
      li.append(when, title, save, del);
      return li;
    }),
  );
  const rejected = await device.rejected();
  $('rejected-section').hidden = rejected.length === 0;
  $('rejected').replaceChildren(
    ...rejected.map((r) => {
      const li = document.createElement('li');
      li.className = 'rejected';
      li.textContent = `${new Date(r.atMs).toISOString()}: ${r.code}: ${r.reason}`;
      return li;
    }),
  );
  const conflicts = await device.query<Record<string, unknown>>(
    'SELECT id, tbl, row_key, col, local_value, local_origin, remote_value, remote_origin, winner, value, policy ' +
      'FROM flotilla_conflicts ORDER BY id',
  );
  $('conflicts').replaceChildren(
    ...conflicts.map((c) => {
      const li = document.createElement('li');
      li.className = 'conflict';
      const what = c.col ? `${c.tbl}.${c.col}` : `${c.tbl} row`;
      li.textContent =
        `${what} of ${c.row_key}: ${JSON.stringify(c.local_value)} (${c.local_origin}) against ` +
        `${JSON.stringify(c.remote_value)} (${c.remote_origin}) → ${c.winner} won (${c.policy}): ${JSON.stringify(c.value)}`;
      return li;
    }),
  );
}

/** Runs a local change, shows the calendar, and syncs it if the network is there. */
async function act(f: () => Promise<unknown>): Promise<void> {
  try {
    showError(null);
    await f();
    await render();
    void device!.sync().then(render, render);
  } catch (e) {
    showError(e);
  }
}

function randomId(): string {
  const b = crypto.getRandomValues(new Uint8Array(8));
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** The local database of a device token, named by the token's public id (flt_<id>_<secret>). */
function openDevice(token: string): Promise<DeviceClient> {
  const id = TOKEN.exec(token)![1];
  return DeviceClient.open({ token, name: `calendar-${id}` });
}

const TOKEN = /^flt_([0-9a-fA-F]{12})_[A-Za-z0-9_-]{20,100}$/;

async function start(s: Saved): Promise<void> {
  user = s.user;
  $('connect').hidden = true;
  $('calendar').hidden = false;
  $('who').textContent = user;
  try {
    device ??= await openDevice(s.token);
  } catch (e) {
    $('status').dataset.state = 'failing';
    $('status').textContent = `could not open the local database: ${(e as Error).message}`;
    return;
  }
  // For the browser's console (and the browser tests): the device client itself.
  (window as unknown as { flotillaDevice: DeviceClient }).flotillaDevice = device;
  $('storage').textContent = device.opened?.persisted
    ? `stored in this browser (SQLite ${device.opened.sqliteVersion}, OPFS)`
    : 'not persisted: this browser gives no OPFS here, the calendar lives until the page closes';
  await render();
  device.startBackgroundSync(2000, () => void render());
}

// Connecting checks the token with a first sync, which also says whose calendar it is; only
// then is the token kept (a wrong one is never stored).
$('connect-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const token = ($('connect-token') as HTMLInputElement).value.replace(/[\s\u200b-\u200d\ufeff]/g, '');
  const say = (text: string) => ($('connect-error').textContent = text);
  if (!TOKEN.test(token)) {
    say('that is not a device token: one looks like flt_<id>_<secret> (from `flotilla device add NAME --user USER`)');
    return;
  }
  say('connecting…');
  void (async () => {
    let d: DeviceClient | null = null;
    try {
      d = await openDevice(token);
      // Connecting is going online (the database may have been left switched offline).
      await d.setOffline(false);
      const report = await d.sync();
      if (!report.user) throw new Error('the server did not say whose device this is (an older server?)');
      device = d;
      const s = { user: report.user, token };
      localStorage.setItem(KEY, JSON.stringify(s));
      say('');
      await start(s);
    } catch (err) {
      d?.close();
      const ex = err as DeviceCallError;
      say(
        ex.kind === 'unreachable' || ex.kind === 'offline'
          ? `the server could not be reached (${ex.message}): connect once while online`
          : `not connected: ${ex.message}`,
      );
    }
  })();
});

$('add-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const title = ($('add-title') as HTMLInputElement).value.trim();
  const starts = ($('add-starts') as HTMLInputElement).value;
  const minutes = Number(($('add-minutes') as HTMLInputElement).value || 30);
  if (!title || !starts) return;
  void act(async () => {
    await device!.execute('INSERT INTO events (id, owner, title, starts, minutes) VALUES (?1, ?2, ?3, ?4, ?5)', [
      randomId(),
      user,
      title,
      starts.length === 16 ? `${starts}:00` : starts,
      minutes,
    ]);
    ($('add-title') as HTMLInputElement).value = '';
  });
});

$('sync-now').addEventListener('click', () => {
  showError(null);
  device
    ?.sync()
    .then(render)
    .catch((e: DeviceCallError) => {
      showError(e);
      void render();
    });
});

$('work-offline').addEventListener('change', (e) => {
  void act(() => device!.setOffline((e.target as HTMLInputElement).checked));
});

$('disconnect').addEventListener('click', () => {
  if (!confirm('Forget this device here? Changes not synced yet stay in this browser\'s database.')) return;
  localStorage.removeItem(KEY);
  location.reload();
});

// The page's files are kept by a service worker, so the calendar opens without a network.
if ('serviceWorker' in navigator) {
  navigator.serviceWorker.register('./sw.js').catch((e) => console.warn('no offline page:', e));
}

const s = saved();
if (s) void start(s);
else $('connect').hidden = false;
