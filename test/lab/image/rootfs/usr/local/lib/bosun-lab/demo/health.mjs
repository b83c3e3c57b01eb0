// Health check of bosun-demo, run inside the machine: exit 0 when the service
// answers on its configured port within 5 s.
import { readFileSync } from 'node:fs';
import { get } from 'node:http';

const m = /^\s*port\s*=\s*'?(\d+)'?\s*$/m.exec(readFileSync('/etc/demo/demo.conf', 'utf8'));
const port = m ? Number(m[1]) : 8080;
const req = get({ host: '127.0.0.1', port, path: '/', timeout: 5000 }, (res) => {
  res.resume();
  process.exit(res.statusCode === 200 ? 0 : 1);
});
req.on('timeout', () => process.exit(1));
req.on('error', () => process.exit(1));
