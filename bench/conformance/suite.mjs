// Runs the http-cache-tests suite against one base URL and prints its results as JSON, as the
// package's cli.mjs does, except that every request gives up after FETCH_TIMEOUT_MS (default
// 20000): a cache that never answers one request fails that test (AbortError) instead of
// stalling the whole run. Usage: node suite.mjs PKGDIR BASE_URL
import path from 'path'
import { pathToFileURL } from 'url'

const [pkg, base] = process.argv.slice(2)
const load = async file => import(pathToFileURL(path.join(pkg, file)).href)
const { runTests, getResults } = await load('client/runner.mjs')
const fetch = (await load('node_modules/node-fetch/lib/index.js').catch(
  () => load('../node-fetch/lib/index.js'))).default
const tests = (await load('tests/index.mjs')).default
tests.push((await load('tests/surrogate-control.mjs')).default)

const timeout = parseInt(process.env.FETCH_TIMEOUT_MS || '20000')
const timedFetch = (url, init) => fetch(url, { ...init, signal: AbortSignal.timeout(timeout) })

await runTests(tests, timedFetch, false, base)
console.log(JSON.stringify(getResults(), null, 2))
