// Aedes enforcing tomato-mqtt's roles from the JSON that `tomato broker-config --rules FILE`
// writes (tomato_mqtt/wire/broker_rules.py says what it holds and what a broker must do
// with it): logins checked against their Mosquitto `$7$` hashes (PBKDF2-SHA512), every
// PUBLISH against the login's publish filters, every SUBSCRIBE against its subscribe
// filters (refused unless they cover every topic it can match), every delivery against
// them too. A forbidden PUBLISH closes the connection: Aedes's way under MQTT 3.1.1, which
// has no negative acknowledgement (Mosquitto acknowledges it and drops it).
import { readFileSync } from 'node:fs'
import { pbkdf2Sync, timingSafeEqual } from 'node:crypto'

const SCHEMA = 'tomato-mqtt/broker-rules/1'

// MQTT matching of a topic against a filter with + and #
export function matches (filter, topic) {
  const f = filter.split('/')
  const t = topic.split('/')
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return true
    if (i >= t.length || (f[i] !== '+' && f[i] !== t[i])) return false
  }
  return f.length === t.length
}

// whether every topic `filter` can match is matched by `pattern` (+ needs + or #, # needs #)
export function covers (pattern, filter) {
  const p = pattern.split('/')
  const f = filter.split('/')
  for (let i = 0; i < p.length; i++) {
    if (p[i] === '#') return true
    if (i >= f.length || f[i] === '#') return false
    if (p[i] !== '+' && (f[i] === '+' || p[i] !== f[i])) return false
  }
  return p.length === f.length
}

function verify (password, hash) {
  const [, seven, iterations, salt, dk] = hash.split('$')
  if (seven !== '7') return false
  const want = Buffer.from(dk, 'base64')
  const got = pbkdf2Sync(password, Buffer.from(salt, 'base64'), Number(iterations), want.length, 'sha512')
  return got.length === want.length && timingSafeEqual(got, want)
}

export function loadRules (path) {
  const doc = JSON.parse(readFileSync(path, 'utf8'))
  if (doc.schema !== SCHEMA) {
    throw new Error(`${path}: not a tomato-mqtt rules document (schema ${JSON.stringify(doc.schema)}, expected ${SCHEMA})`)
  }
  return new Map(doc.logins.map((l) => [l.login, l]))
}

export function secure (aedes, path) {
  const logins = loadRules(path)
  const who = new WeakMap() // client -> its login's entry
  aedes.authenticate = (client, username, password, callback) => {
    const login = logins.get(username)
    if (!login || !password || !verify(password, login.password_hash)) {
      const err = new Error('bad user name or password')
      err.returnCode = 4
      return callback(err, null)
    }
    who.set(client, login)
    callback(null, true)
  }
  aedes.authorizePublish = (client, packet, callback) => {
    const login = client && who.get(client)
    if (login && login.publish.some((f) => matches(f, packet.topic))) return callback(null)
    callback(new Error(`${login ? login.login : 'no login'} may not publish on ${packet.topic}`))
  }
  aedes.authorizeSubscribe = (client, sub, callback) => {
    const login = who.get(client)
    callback(null, login && login.subscribe.some((p) => covers(p, sub.topic)) ? sub : null)
  }
  aedes.authorizeForward = (client, packet) => {
    const login = who.get(client)
    return login && login.subscribe.some((p) => matches(p, packet.topic)) ? packet : null
  }
}
