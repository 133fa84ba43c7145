// Aedes (https://github.com/moscajs/aedes) on one TCP port: a second MQTT 3.1.1 broker
// besides Mosquitto for the tests, as a site would run it (in-memory persistence: a crash
// loses every session and retained message). Usage: node server.mjs PORT [HOST]
import net from 'node:net'
import { Aedes } from 'aedes'

const port = Number(process.argv[2])
const host = process.argv[3] || '127.0.0.1'
const aedes = await Aedes.createBroker()
const server = net.createServer(aedes.handle)
aedes.on('clientError', (client, err) => console.error(`client ${client && client.id}: ${err.message}`))
server.on('error', (err) => { console.error(`aedes: ${err.message}`); process.exit(2) })
server.listen(port, host, () => console.log(`aedes listening on ${host}:${port}`))
process.on('SIGTERM', () => server.close(() => aedes.close(() => process.exit(0))))
