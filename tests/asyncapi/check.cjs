// The integrator check (issue 14): the official AsyncAPI parser reads the document, and
// every captured message is validated (Ajv, the parser's own JSON Schema validator)
// against the schemas the document declares for it, with no undeclared field.
//
// node check.cjs DOC.json CAPTURE.jsonl -> one JSON summary line on stdout.
// Each capture line: {"topic", "payload" (the JSON text), "schemas": [pointers into the
// document, any one may match], "checks": [[pointer, JSON path of a value in payload]]}.
'use strict';
const fs = require('fs');
const { Parser } = require('@asyncapi/parser');
const Ajv = require('ajv');
const addFormats = require('ajv-formats');

function absolutise(node) {
  if (Array.isArray(node)) return node.map(absolutise);
  if (node && typeof node === 'object') {
    const out = {};
    for (const [k, v] of Object.entries(node)) {
      out[k] = k === '$ref' && typeof v === 'string' && v.startsWith('#/') ? 'doc' + v : absolutise(v);
    }
    return out;
  }
  return node;
}

function at(doc, pointer) {
  let node = doc;
  for (const part of pointer.replace(/^doc#\//, '').split('/')) {
    node = node[part.replace(/~1/g, '/').replace(/~0/g, '~')];
    if (node === undefined) throw new Error('no ' + pointer);
  }
  return node;
}

(async () => {
  const [docPath, capPath] = process.argv.slice(2);
  const text = fs.readFileSync(docPath, 'utf8');
  const { document, diagnostics } = await new Parser().parse(text);
  const docErrors = diagnostics.filter((d) => d.severity === 0).map((d) => d.message);
  const docWarnings = diagnostics.filter((d) => d.severity === 1).map((d) => d.message);
  const full = JSON.parse(text);
  // the schemas (Ajv reads the document's other top-level keys as keywords: 'id')
  const doc = absolutise({ components: full.components, 'x-commands': full['x-commands'] });
  const ajv = new Ajv({ strict: false, allErrors: true });
  addFormats(ajv);
  ajv.addSchema(doc, 'doc');
  const compiled = new Map();
  const validator = (schema) => {
    if (!compiled.has(schema)) compiled.set(schema, ajv.compile(schema));
    return compiled.get(schema);
  };
  const resolve = (s) => {
    while (s && s.$ref) s = at(doc, s.$ref);
    return s;
  };
  // fields of value that its schema does not declare (a free map is declared)
  function undeclared(schema, value, path, out) {
    schema = resolve(schema);
    if (!schema || typeof schema !== 'object') return;
    for (const key of ['anyOf', 'oneOf']) {
      if (schema[key]) {
        // of the alternatives the value matches, the one that declares most of it
        let best = null;
        for (const s of schema[key].filter((s) => validator(resolve(s))(value))) {
          const found = [];
          undeclared(s, value, path, found);
          if (best === null || found.length < best.length) best = found;
        }
        if (best) out.push(...best);
        return;
      }
    }
    if (schema.allOf) return schema.allOf.forEach((s) => undeclared(s, value, path, out));
    if (Array.isArray(value)) {
      const items = schema.items || (schema.prefixItems && schema.prefixItems[0]);
      if (items) value.forEach((v, i) => undeclared(items, v, `${path}[${i}]`, out));
      return;
    }
    if (value && typeof value === 'object') {
      const props = schema.properties || {};
      const extra = schema.additionalProperties;
      for (const [k, v] of Object.entries(value)) {
        if (k in props) undeclared(props[k], v, `${path}.${k}`, out);
        else if (extra && typeof extra === 'object') undeclared(extra, v, `${path}.${k}`, out);
        else if (schema.properties && extra !== true) out.push(`${path}.${k}`);
      }
    }
  }
  const errors = [];
  const undeclaredFields = new Set();
  let n = 0;
  for (const line of fs.readFileSync(capPath, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    const cap = JSON.parse(line);
    n += 1;
    const payload = JSON.parse(cap.payload);
    const schemas = cap.schemas.map((p) => at(doc, p));
    const ok = schemas.find((s) => validator(s)(payload));
    if (!ok) {
      const v = validator(schemas[0]);
      v(payload);
      errors.push({ topic: cap.topic, errors: v.errors.slice(0, 3) });
      continue;
    }
    const out = [];
    undeclared(ok, payload, '$', out);
    for (const [pointer, jpath] of cap.checks || []) {
      let value = payload;
      for (const k of jpath) value = value == null ? undefined : value[k];
      if (value === undefined || value === null) continue;
      const s = at(doc, pointer);
      const v = validator(s);
      if (!v(value)) errors.push({ topic: cap.topic, at: jpath.join('.'), errors: v.errors.slice(0, 3) });
      else undeclared(s, value, '$.' + jpath.join('.'), out);
    }
    for (const f of out) undeclaredFields.add(`${cap.topic.split('/').slice(3).join('/')}: ${f}`);
  }
  console.log(JSON.stringify({
    parsed: !!document, doc_errors: docErrors, doc_warnings: docWarnings,
    messages: n, errors, undeclared: [...undeclaredFields].sort(),
  }));
})().catch((e) => { console.error(e); process.exit(2); });
