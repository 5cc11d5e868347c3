// Builds the calendar page and its device worker with esbuild into the node's assets
// (crates/flotilla-node/assets/calendar), which the Rust build embeds: run `npm run build`
// after changing anything under src/ or calendar/, and commit the output.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, '../../crates/flotilla-node/assets/calendar');
mkdirSync(out, { recursive: true });
const common = { bundle: true, format: 'esm', target: 'es2022', minify: true, legalComments: 'linked', logLevel: 'info' };
await build({ ...common, entryPoints: [join(here, 'calendar/app.ts')], outfile: join(out, 'app.js') });
await build({ ...common, entryPoints: [join(here, 'src/worker.ts')], outfile: join(out, 'device-worker.js') });
copyFileSync(join(here, 'calendar/index.html'), join(out, 'index.html'));
copyFileSync(join(here, 'node_modules/@sqlite.org/sqlite-wasm/dist/sqlite3.wasm'), join(out, 'sqlite3.wasm'));
