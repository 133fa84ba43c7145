// Aedes (https://github.com/moscajs/aedes) on one TCP port: a second MQTT 3.1.1 broker
// besides Mosquitto for the tests, as a site would run it (in-memory persistence: a crash
// loses every session and retained message). Usage: node server.mjs PORT [HOST [RULES]]
// with RULES the JSON of `tomato broker-config --rules FILE`: logins and roles enforced
// (rules.mjs); without it, an open broker.
import net from 'node:net'
import { Aedes } from 'aedes'
import { secure } from './rules.mjs'

const port = Number(process.argv[2])
const host = process.argv[3] || '127.0.0.1'
const rules = process.argv[4]
const aedes = await Aedes.createBroker()
if (rules) {
  try {
    secure(aedes, rules)
  } catch (err) {
    console.error(`aedes: ${err.message}`)
    process.exit(2)
  }
}
const server = net.createServer(aedes.handle)
aedes.on('clientError', (client, err) => console.error(`client ${client && client.id}: ${err.message}`))
server.on('error', (err) => { console.error(`aedes: ${err.message}`); process.exit(2) })
server.listen(port, host, () => console.log(`aedes listening on ${host}:${port}${rules ? ' (logins and roles from ' + rules + ')' : ''}`))
process.on('SIGTERM', () => server.close(() => aedes.close(() => process.exit(0))))
