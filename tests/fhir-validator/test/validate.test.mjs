// node --test: every valid sample passes, every invalid sample fails with the expected finding.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const run = (...files) => spawnSync(process.execPath, [join(root, 'validate.mjs'), ...files], { cwd: root, encoding: 'utf8' });

const valid = readdirSync(join(root, 'samples')).filter((f) => f.endsWith('.json')).map((f) => `samples/${f}`);

// invalid sample -> substrings that must appear in the output (ERROR lines)
const expected = {
  'heartrate-no-category.json': ['ERROR Observation.category: Missing required property [profile observation-heartrate]'],
  'heartrate-no-profile-no-category.json': ['ERROR Observation.category: Missing required property [profile observation-heartrate]'],
  'heartrate-category-laboratory.json': ["ERROR Observation.category: slice 'VSCat' needs at least 1 value(s), found 0"],
  'bp-component-no-code.json': ['ERROR Observation.component[1].code: Missing required property', "slice 'DiastolicBP' needs at least 1 value(s), found 0"],
  'bp-no-diastolic.json': ["ERROR Observation.component: slice 'DiastolicBP' needs at least 1 value(s), found 0"],
  'bp-no-components.json': ['ERROR Observation.component: Missing required property', 'Constraint vs-2 not met'],
  'bp-systolic-wrong-unit.json': ['ERROR Observation.component[0].valueQuantity.code: value "mmHg" must be exactly "mm[Hg]"', 'ucum-vitals-common'],
  'heartrate-wrong-unit.json': ['ERROR Observation.valueQuantity.code: value "beats/min" must be exactly "/min"'],
  'heartrate-value-string.json': ['ERROR Observation.valueString: type string is not allowed here by the profile (allowed: Quantity)'],
  'heartrate-bad-status.json': ['ERROR Observation.status: code "done" is not in required ValueSet http://hl7.org/fhir/ValueSet/observation-status'],
  'heartrate-gateway-ext-string.json': ['ERROR Observation.extension[0].valueString: type string is not allowed here by the profile (allowed: Reference) [extension]'],
  'heartrate-gateway-ext-to-patient.json': ['ERROR Observation.extension[0].valueReference: reference Patient/pat-1 points to Patient; allowed: Device'],
  'heartrate-unknown-core-extension.json': ['ERROR Observation.extension[1]: unknown core extension'],
  'heartrate-device-points-to-patient.json': ['ERROR Observation.device: reference Patient/pat-1 points to Patient; allowed: Device, DeviceMetric'],
  'device-bad-codes.json': ['ERROR Device.status: code "on" is not in required ValueSet', 'ERROR Device.deviceName[0].type: code "brand"'],
  'device-gateway-ext-wrong-context.json': ['is not allowed on Device (context: Observation)'],
  'provenance-no-recorded.json': ['ERROR Provenance.recorded: Missing required property', 'ERROR Provenance.entity[0].role: code "origin"'],
  'bundle-searchset-bad-entries.json': ['ERROR Bundle.entry[0].resource.category: Missing required property', 'ERROR Bundle.entry[1].resource.component[0].code: Missing required property'],
  'bundle-transaction-no-request.json': ['ERROR Bundle: Constraint bdl-3 not met'],
  'bundle-transaction-dangling-ref.json': ['ERROR Bundle.entry[7].resource.agent[0].who: reference urn:uuid:deadbeef-0000-4000-8000-000000000000 does not resolve'],
};

test('all valid samples pass (one process)', () => {
  const r = run(...valid);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.ok(!/ERROR|WARNING/.test(r.stdout), r.stdout);
});

test('every file in samples/invalid has an expectation', () => {
  assert.deepEqual(readdirSync(join(root, 'samples/invalid')).sort(), Object.keys(expected).sort());
});

for (const [file, needles] of Object.entries(expected)) {
  test(`invalid: ${file}`, () => {
    const r = run(`samples/invalid/${file}`);
    assert.equal(r.status, 1, r.stdout + r.stderr);
    for (const n of needles) assert.ok(r.stdout.includes(n), `missing "${n}" in:\n${r.stdout}`);
  });
}

test('stdin input and usage errors', () => {
  const out = execFileSync(process.execPath, [join(root, 'validate.mjs')], { cwd: root, input: '{"resourceType":"Device","status":"active"}', encoding: 'utf8' });
  assert.match(out, /<stdin>: OK Device/);
  assert.equal(run('--bogus').status, 2);
  const bad = spawnSync(process.execPath, [join(root, 'validate.mjs')], { input: '{not json', encoding: 'utf8' });
  assert.equal(bad.status, 2);
});

test('--defs loads a hailan extension definition', () => {
  const without = run('test/fixtures/heartrate-with-hailan-ext.json');
  assert.equal(without.status, 0);
  assert.match(without.stdout, /WARNING .*measurement-sequence not loaded/);
  const ok = run('--defs', 'test/fixtures/hailan-measurement-sequence.json', 'test/fixtures/heartrate-with-hailan-ext.json');
  assert.equal(ok.status, 0, ok.stdout);
  assert.ok(!ok.stdout.includes('WARNING'), ok.stdout);
  const bad = run('--defs', 'test/fixtures/hailan-measurement-sequence.json', 'test/fixtures/heartrate-with-bad-hailan-ext.json');
  assert.equal(bad.status, 1);
  assert.match(bad.stdout, /valueString: type string is not allowed here by the profile \(allowed: unsignedInt\)/);
});

test('--no-auto-vitals and --profile', () => {
  // no meta.profile and no category: only caught through the LOINC -> vital-signs rule
  const f = 'samples/invalid/heartrate-no-profile-no-category.json';
  assert.equal(run('--no-auto-vitals', f).status, 0);
  const r = run('--no-auto-vitals', '--profile', 'http://hl7.org/fhir/StructureDefinition/vitalsigns', f);
  assert.equal(r.status, 1);
  assert.match(r.stdout, /Observation.category: Missing required property \[profile observation-vitalsigns\]/);
});
