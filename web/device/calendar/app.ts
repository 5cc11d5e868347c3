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
  list.replaceChildren(
    ...events.map((ev) => {
      const li = document.createElement('li');
      li.dataset.id = ev.id;
      li.dataset.title = ev.title;
      const when = document.createElement('span');
      when.className = 'when';
      when.textContent = `${ev.starts.replace('T', ' ')} · ${ev.minutes} min`;
      const title = document.createElement('input');
      title.className = 'title';
      title.value = ev.title;
      title.setAttribute('aria-label', 'title');
      const save = document.createElement('button');
      save.className = 'save';
      save.textContent = 'Rename';
      save.onclick = () => act(() => device!.execute('UPDATE events SET title = ?1 WHERE id = ?2', [title.value, ev.id]));
      const del = document.createElement('button');
      del.className = 'delete';
      del.textContent = 'Delete';
      del.onclick = () => act(() => device!.execute('DELETE FROM events WHERE id = ?1', [ev.id]));
      li.append(when, title, save, del);
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

async function start(s: Saved): Promise<void> {
  user = s.user;
  $('connect').hidden = true;
  $('calendar').hidden = false;
  try {
    // One database per device token, named by the token's public id (flt_<id>_<secret>).
    const id = /^flt_([A-Za-z0-9]+)_/.exec(s.token)?.[1] ?? 'device';
    device = await DeviceClient.open({ token: s.token, name: `calendar-${id}` });
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

$('connect-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const s = { user: ($('connect-user') as HTMLInputElement).value.trim(), token: ($('connect-token') as HTMLInputElement).value.trim() };
  if (!/^flt_/.test(s.token)) {
    $('connect-error').textContent = 'a device token starts with flt_ (from `flotilla device add`)';
    return;
  }
  localStorage.setItem(KEY, JSON.stringify(s));
  void start(s);
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

const s = saved();
if (s) void start(s);
else $('connect').hidden = false;
