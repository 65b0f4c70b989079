// Starts the suite's own test origin (server/server.mjs of http-cache-tests) on loopback only:
// the package's server listens on every interface, so listen() is given 127.0.0.1 here.
// Usage: npm_config_port=PORT npm_config_protocol=http npm_config_pidfile=FILE node origin.mjs PKGDIR
import http from 'http'
import path from 'path'
import { pathToFileURL } from 'url'

const listen = http.Server.prototype.listen
http.Server.prototype.listen = function (port, ...rest) {
  return listen.call(this, port, '127.0.0.1', ...rest)
}
await import(pathToFileURL(path.join(process.argv[2], 'server', 'server.mjs')).href)
