// Prints the http-cache-tests suite's test definitions as JSON, keyed by test id:
// { id: { suite, suite_name, name, kind, depends_on, browser_only, browser_skip } }.
// Run from the package's directory: node tests.mjs (the package is imported, not copied).
import { pathToFileURL } from 'url'
import path from 'path'

const pkg = process.argv[2] || process.cwd()
const load = async file => (await import(pathToFileURL(path.join(pkg, file)).href)).default
const suites = [...await load('tests/index.mjs'), await load('tests/surrogate-control.mjs')]
const out = {}
for (const suite of suites) {
  for (const test of suite.tests) {
    out[test.id] = {
      suite: suite.id,
      suite_name: suite.name,
      name: test.name,
      kind: test.kind || 'required',
      depends_on: test.depends_on || [],
      browser_only: test.browser_only === true,
      browser_skip: test.browser_skip === true
    }
  }
}
console.log(JSON.stringify(out, null, 2))
