// Build the dashboard into one self-contained dist/index.html (script and CSS inline): Mosquitto's
// http_dir sends no Content-Type, so a page that loads anything else from it breaks. Deterministic:
// the same lockfile gives the same bytes (CI checks this against the committed file).
import { build } from 'esbuild'
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs'
import { gzipSync } from 'node:zlib'

const BUDGET_BYTES = 600 * 1024 // uncompressed: http_dir serves it as is

const here = new URL('.', import.meta.url)
const read = (p) => readFileSync(new URL(p, here), 'utf8')
const result = await build({
  entryPoints: [new URL('src/main.js', here).pathname],
  bundle: true,
  minify: true,
  format: 'iife',
  platform: 'browser',
  target: ['chrome110', 'firefox110', 'safari16'],
  legalComments: 'eof',
  charset: 'utf8',
  write: false,
  logLevel: 'warning'
})
const js = result.outputFiles[0].text.replaceAll('</script', '<\\/script')
const css = read('node_modules/uplot/dist/uPlot.min.css') + read('src/style.css')
const html = read('src/index.html')
  .replace('/*STYLE*/', () => css.replaceAll('</style', '<\\/style'))
  .replace('/*SCRIPT*/', () => js)
mkdirSync(new URL('dist/', here), { recursive: true })
writeFileSync(new URL('dist/index.html', here), html)
const size = Buffer.byteLength(html)
const gz = gzipSync(html, { level: 9 }).length
console.log(`dist/index.html: ${(size / 1024).toFixed(1)} KiB (${(gz / 1024).toFixed(1)} KiB gzipped), budget ${BUDGET_BYTES / 1024} KiB`)
if (size > BUDGET_BYTES) {
  console.error(`the dashboard is over its size budget by ${size - BUDGET_BYTES} bytes`)
  process.exit(1)
}
