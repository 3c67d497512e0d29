import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseModelsFile } from '../../model-manager/models-file';
import { ENTRY_FIELDS, redactSpec, validateEntry } from '../../model-manager/schema';
import { ModelSpecSchema, SPEC_DEFAULTS, SPEC_FIELDS } from '../../core/model-spec';
import { registryKeys } from '../../model-manager/keys';

const FILE = { allowCommand: true };

describe('one schema', () => {
  test('every field that always has a value has its default in the schema (except name, source, env)', () => {
    for (const key of ModelSpecSchema.required ?? []) {
      if (key === 'name') continue;
      expect([key, (SPEC_FIELDS as Record<string, { default?: unknown }>)[key].default]).not.toEqual([key, undefined]);
    }
    expect(SPEC_DEFAULTS).toMatchObject({ version: '1', batch_size: 1, pull_policy: 'if-missing', read_only_root: true });
    expect(Object.keys(SPEC_DEFAULTS)).not.toEqual(expect.arrayContaining(['name']));
  });

  test('the entry schema is derived: every model field but name/source/cwd, plus Inferoxy\'s address, none with a default', () => {
    const entry = Object.keys(ENTRY_FIELDS);
    const spec = Object.keys(SPEC_FIELDS).filter((k) => !['name', 'source', 'cwd'].includes(k));
    expect(entry.filter((k) => k !== 'address').sort()).toEqual(spec.sort());
    expect(entry).toContain('address');
    for (const s of Object.values(ENTRY_FIELDS)) expect((s as { default?: unknown }).default).toBeUndefined();
  });
});

describe('validateEntry', () => {
  test('Inferoxy entry is accepted unchanged; address becomes image; defaults applied', () => {
    const r = validateEntry(
      'stub',
      { address: 'registry/models/stub:v5', batch_size: 256, run_on_gpu: false, stateless: true },
      FILE,
    );
    expect(r.errors).toBeUndefined();
    expect(r.spec).toEqual({
      ...SPEC_DEFAULTS,
      name: 'stub',
      image: 'registry/models/stub:v5',
      batch_size: 256,
      run_on_gpu: false,
      stateless: true,
      env: {},
      source: 'file',
    });
  });

  test('our fields; version number becomes a string; env scalars become strings', () => {
    const r = validateEntry(
      'det',
      {
        image: 'det:1',
        version: 3,
        max_wait_ms: 5,
        queue_capacity: 10,
        timeout_ms: 1000,
        startup_timeout_ms: 2000,
        min_replicas: 0,
        max_replicas: 4,
        env: { THREADS: 4, DEBUG: false, NAME: 'x' },
      },
      { allowCommand: false, source: 'api' },
    );
    expect(r.spec).toMatchObject({
      version: '3',
      max_wait_ms: 5,
      queue_capacity: 10,
      timeout_ms: 1000,
      startup_timeout_ms: 2000,
      min_replicas: 0,
      max_replicas: 4,
      env: { THREADS: '4', DEBUG: 'false', NAME: 'x' },
      source: 'api',
    });
  });

  test('command: string is split on whitespace, array kept', () => {
    expect(validateEntry('a', { command: '  node  ./echo.js --rows 2 ' }, FILE).spec?.command).toEqual([
      'node',
      './echo.js',
      '--rows',
      '2',
    ]);
    expect(validateEntry('a', { command: ['python3', 'my model.py'] }, FILE).spec?.command).toEqual([
      'python3',
      'my model.py',
    ]);
    expect(validateEntry('a', { command: [] }, FILE).errors).toEqual([
      'model "a": field "command" must be a non-empty string or a non-empty list of strings (got [])',
    ]);
    expect(validateEntry('a', { command: '   ' }, FILE).errors?.[0]).toMatch(/field "command" must be/);
  });

  test('command refused where not allowed', () => {
    expect(validateEntry('a', { image: 'x', command: 'node m.js' }, { allowCommand: false }).errors).toEqual([
      'model "a": field "command" can only be set in models.yaml on disk',
    ]);
  });

  test('clear messages naming model and field', () => {
    expect(validateEntry('simple', { image: 'x', batch_size: 'eight' }, FILE).errors).toEqual([
      'model "simple": field "batch_size" must be an integer >= 0 (0: a non-batching model) (got "eight")',
    ]);
    expect(validateEntry('simple', { image: 'x', batch_size: -1 }, FILE).errors).toEqual([
      'model "simple": field "batch_size" must be an integer >= 0 (0: a non-batching model) (got -1)',
    ]);
    expect(validateEntry('simple', { image: 'x', stateless: 'yes' }, FILE).errors).toEqual([
      'model "simple": field "stateless" must be a boolean (true or false) (got "yes")',
    ]);
    expect(validateEntry('simple', { image: 'x', max_wait_ms: 1.5 }, FILE).errors?.[0]).toBe(
      'model "simple": field "max_wait_ms" must be an integer from 0 to 2147483647 (milliseconds) (got 1.5)',
    );
    // Beyond 2^31-1 ms a Node timer fires at once: refused at the schema, for every *_ms field.
    expect(validateEntry('simple', { image: 'x', timeout_ms: 2 ** 31 }, FILE).errors).toEqual([
      'model "simple": field "timeout_ms" must be an integer from 1 to 2147483647 (milliseconds) (got 2147483648)',
    ]);
  });

  test('unknown fields are errors', () => {
    const errs = validateEntry('m', { image: 'x', batchsize: 4 }, FILE).errors;
    expect(errs).toHaveLength(1);
    expect(errs![0]).toMatch(/^model "m": unknown field "batchsize" \(known fields: image, address, /);
  });

  test('cross-field checks', () => {
    expect(validateEntry('m', { image: 'x', min_replicas: 3, max_replicas: 2 }, FILE).errors).toEqual([
      'model "m": field "min_replicas" (3) must be <= "max_replicas" (2)',
    ]);
    expect(validateEntry('m', { image: 'a', address: 'b' }, FILE).errors?.[0]).toMatch(/"image" \("a"\) and "address" \("b"\) differ/);
    expect(validateEntry('m', { image: 'a', address: 'a' }, FILE).spec?.image).toBe('a');
    expect(validateEntry('m', {}, FILE).errors?.[0]).toMatch(/^model "m": needs "image"/);
    expect(validateEntry('m', {}, { allowCommand: false, requireLaunch: false }).spec).toBeDefined();
    expect(validateEntry('m', { image: 'x', name: 'other' }, FILE).errors?.[0]).toMatch(/field "name" is "other"/);
  });

  test('model names', () => {
    for (const bad of ['a:b', '', '-x', '.x', 'a b', 'x'.repeat(129)]) {
      expect(validateEntry(bad, { image: 'x' }, FILE).errors?.[0]).toMatch(/model name .* is invalid/);
    }
    for (const good of ['a', 'resnet-50', 'yolo_v8.onnx', 'x'.repeat(128)]) {
      expect(validateEntry(good, { image: 'x' }, FILE).errors).toBeUndefined();
    }
  });

  test('env names and values', () => {
    expect(validateEntry('m', { image: 'x', env: { 'BAD-NAME': '1' } }, FILE).errors?.[0]).toMatch(
      /field "env" has an invalid variable name "BAD-NAME"/,
    );
    expect(validateEntry('m', { image: 'x', env: { A: { b: 1 } } }, FILE).errors?.[0]).toMatch(/field "env" must be/);
    expect(validateEntry('m', { image: 'x', env: ['A=1'] }, FILE).errors?.[0]).toMatch(/field "env" must be/);
  });

  test('non-map entry', () => {
    expect(validateEntry('m', 'stub:v5', FILE).errors).toEqual(['model "m": entry must be a map of fields (got "stub:v5")']);
  });

  test('redactSpec hides env values', () => {
    const spec = validateEntry('m', { image: 'x', env: { TOKEN: 's3cret' } }, FILE).spec!;
    expect(redactSpec(spec).env).toEqual({ TOKEN: '***' });
    expect(spec.env.TOKEN).toBe('s3cret');
  });
});

describe('parseModelsFile', () => {
  test("Inferoxy's layout, unchanged (True/False capitalised)", () => {
    const f = parseModelsFile(
      [
        'stub:',
        '  address: public.registry.visionhub.ru/models/stub:v5',
        '  batch_size: 256',
        '  run_on_gpu: False',
        '  stateless: True',
        'other:',
        '  address: other:v1',
        '  batch_size: 1',
        '  run_on_gpu: True',
        '  stateless: False',
      ].join('\n'),
      '/etc/inferoxy/models.yaml',
    );
    expect(f.ok).toBe(true);
    expect(f.errors).toEqual([]);
    expect(f.dir).toBe('/etc/inferoxy');
    expect(f.specs.map((s) => [s.name, s.image, s.batch_size, s.run_on_gpu, s.stateless])).toEqual([
      ['stub', 'public.registry.visionhub.ru/models/stub:v5', 256, false, true],
      ['other', 'other:v1', 1, true, false],
    ]);
  });

  test('models: map, models: list, top-level list', () => {
    const a = parseModelsFile('models:\n  echo:\n    command: node echo.js\n  img:\n    image: img:1\n', '/srv/m/models.yaml');
    expect(a.specs.map((s) => s.name)).toEqual(['echo', 'img']);
    expect(a.specs[0]).toMatchObject({ command: ['node', 'echo.js'], cwd: '/srv/m' });
    expect(a.specs[1].cwd).toBeUndefined();

    const b = parseModelsFile('models:\n  - name: echo\n    image: e:1\n  - name: img\n    image: i:1\n', '/x/models.yaml');
    expect(b.specs.map((s) => s.name)).toEqual(['echo', 'img']);

    const c = parseModelsFile('- name: echo\n  image: e:1\n- image: nameless\n', '/x/models.yaml');
    expect(c.specs.map((s) => s.name)).toEqual(['echo']);
    expect(c.errors).toEqual(['models file /x/models.yaml: list item 2 needs a "name" string field (got {"image":"nameless"})']);
  });

  test('a model called "models" in the Inferoxy layout is a model, not a wrapper', () => {
    const f = parseModelsFile('models:\n  address: m:1\n  batch_size: 2\n  run_on_gpu: false\n  stateless: true\n', '/x/models.yaml');
    expect(f.specs.map((s) => [s.name, s.image])).toEqual([['models', 'm:1']]);
  });

  test('a bad entry is reported and skipped, the others load', () => {
    const f = parseModelsFile('good:\n  image: g:1\nsimple:\n  image: s:1\n  batch_size: eight\n', '/x/models.yaml');
    expect(f.ok).toBe(true);
    expect(f.specs.map((s) => s.name)).toEqual(['good']);
    expect(f.invalid).toEqual(['simple']);
    expect(f.errors).toEqual([
      'models file /x/models.yaml: model "simple": field "batch_size" must be an integer >= 0 (0: a non-batching model) (got "eight")',
    ]);
  });

  test('YAML syntax error: one clear error naming the file', () => {
    const f = parseModelsFile('good:\n  image: [g:1\nbad: x\n', '/x/models.yaml');
    expect(f.ok).toBe(false);
    expect(f.specs).toEqual([]);
    expect(f.errors).toHaveLength(1);
    expect(f.errors[0]).toMatch(/^models file \/x\/models\.yaml: YAML syntax error at line \d+, column \d+: /);
  });

  test('duplicate keys are a syntax error; duplicate list names skipped', () => {
    expect(parseModelsFile('a:\n  image: x\na:\n  image: y\n', '/x/m.yaml').ok).toBe(false);
    const f = parseModelsFile('- name: a\n  image: x\n- name: a\n  image: y\n', '/x/m.yaml');
    expect(f.specs.map((s) => s.image)).toEqual(['x']);
    expect(f.errors[0]).toMatch(/model "a" is defined more than once/);
  });

  test('empty file and bad top level', () => {
    expect(parseModelsFile('', '/x/m.yaml')).toMatchObject({ ok: true, specs: [], errors: [] });
    expect(parseModelsFile('models:\n', '/x/m.yaml')).toMatchObject({ ok: true, specs: [], errors: [] });
    const f = parseModelsFile('just a string', '/x/m.yaml');
    expect(f.ok).toBe(false);
    expect(f.errors[0]).toMatch(/^models file \/x\/m\.yaml: the top level must be/);
  });
});

describe('labels (Triton label files)', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tb-labels-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  test('a path in models.yaml is read relative to the file: one label per line, a final newline adds none', () => {
    mkdirSync(path.join(dir, 'l'), { recursive: true });
    writeFileSync(path.join(dir, 'l', 'a.txt'), 'cat\r\n\ndog\n');
    const f = parseModelsFile('m:\n  image: x\n  labels: { OUT: l/a.txt, OTHER: [x, y] }\n', path.join(dir, 'models.yaml'));
    expect(f.errors).toEqual([]);
    expect(f.specs[0].labels).toEqual({ OUT: ['cat', '', 'dog'], OTHER: ['x', 'y'] });
  });

  test('a missing file is an error naming the model, the field, the output and the resolved path', () => {
    const f = parseModelsFile('m:\n  image: x\n  labels: { OUT: nope.txt }\n', path.join(dir, 'models.yaml'));
    expect(f.specs).toEqual([]);
    expect(f.errors[0]).toContain(`model "m": field "labels": output "OUT": label file ${path.join(dir, 'nope.txt')} not found`);
  });

  test('anywhere but models.yaml (API, stored records) a path is refused; lists are bounded', () => {
    const api = validateEntry('m', { image: 'x', labels: { OUT: '/etc/passwd' } }, { allowCommand: false, source: 'api' });
    expect(api.errors?.[0]).toContain('field "labels": output "OUT" names a label file ("/etc/passwd"): only models.yaml on disk may name files');
    expect(validateEntry('m', { image: 'x', labels: { OUT: ['a'] } }, { allowCommand: false, source: 'api' }).spec?.labels).toEqual({ OUT: ['a'] });
    const long = validateEntry('m', { image: 'x', labels: { OUT: ['x'.repeat(2000)] } }, { allowCommand: false, source: 'api' });
    expect(long.errors?.[0]).toContain('field "labels" must be');
  });
});

describe('registryKeys', () => {
  test('builds prefixed keys and rejects ":"', () => {
    const k = registryKeys();
    expect(k.model('resnet')).toBe('tb:model:resnet');
    expect(k.models).toBe('tb:models');
    expect(k.events).toBe('tb:events');
    expect(registryKeys('test-1:').model('a')).toBe('test-1:model:a');
    expect(() => k.model('a:b')).toThrow(/':'/);
  });
});
