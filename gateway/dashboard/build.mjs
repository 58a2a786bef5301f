// Build the dashboard into one self-contained dist/index.html (script and CSS inline): Mosquitto's
// http_dir sends no Content-Type, so a page that loads anything else from it breaks. Deterministic:
// the same lockfile gives the same bytes (CI checks this against the committed file).
import { build } from 'esbuild'
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs'
import { gzipSync } from 'node:zlib'

const here = new URL('.', import.meta.url)
const read = (p) => readFileSync(new URL(p, here), 'utf8')
// Each page: [entry script, HTML template, output, size budget in bytes (uncompressed: served as is)].
const PAGES = [
  ['src/main.js', 'src/index.html', 'dist/index.html', 600 * 1024], // the operator dashboard (Mosquitto)
  ['src/owner.js', 'src/owner.html', 'dist/owner/index.html', 200 * 1024] // the owner panel (the agent)
]
const css = read('node_modules/uplot/dist/uPlot.min.css') + read('src/style.css')
// The verifier worker, built first and handed to the pages as a string (started from a Blob URL).
const worker = await build({
  entryPoints: [new URL('src/verify-worker.js', here).pathname],
  bundle: true,
  minify: true,
  format: 'iife',
  platform: 'browser',
  target: ['chrome110', 'firefox110', 'safari16'],
  legalComments: 'none',
  charset: 'utf8',
  write: false,
  logLevel: 'warning'
})
const define = { __VERIFY_WORKER__: JSON.stringify(worker.outputFiles[0].text) }
let over = false
for (const [entry, template, output, budget] of PAGES) {
  const result = await build({
    entryPoints: [new URL(entry, here).pathname],
    bundle: true,
    minify: true,
    format: 'iife',
    platform: 'browser',
    target: ['chrome110', 'firefox110', 'safari16'],
    legalComments: 'eof',
    charset: 'utf8',
    define,
    write: false,
    logLevel: 'warning'
  })
  const js = result.outputFiles[0].text.replaceAll('</script', '<\\/script')
  const html = read(template)
    .replace('/*STYLE*/', () => css.replaceAll('</style', '<\\/style'))
    .replace('/*SCRIPT*/', () => js)
  const out = new URL(output, here)
  mkdirSync(new URL('.', out), { recursive: true })
  writeFileSync(out, html)
  const size = Buffer.byteLength(html)
  const gz = gzipSync(html, { level: 9 }).length
  console.log(`${output}: ${(size / 1024).toFixed(1)} KiB (${(gz / 1024).toFixed(1)} KiB gzipped), budget ${budget / 1024} KiB`)
  if (size > budget) {
    console.error(`${output} is over its size budget by ${size - budget} bytes`)
    over = true
  }
}
if (over) process.exit(1)
