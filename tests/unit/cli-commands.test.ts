/** The model-team commands' own checks: validate (no broker needed), init's refusals, the table layout. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initModel } from '../../app/commands/init';
import { formatTable } from '../../app/commands/table';
import { validateModelsFile } from '../../app/commands/validate';

describe('tensorbroker validate', () => {
  let dir: string;
  beforeAll(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-validate-')); });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = (name: string, text: string) => {
    const p = path.join(dir, name);
    fs.writeFileSync(p, text);
    return p;
  };

  test('a good file: one ok line per model, ok', async () => {
    const r = await validateModelsFile(file('good.yaml', 'models:\n  a:\n    image: a:dev\n  b:\n    command: node b.js\n    batch_size: 4\n'));
    expect(r.ok).toBe(true);
    expect(r.text).toBe(`ok  a (image a:dev)\nok  b (command node b.js)\n${path.join(dir, 'good.yaml')}: 2 model(s), no problems\n`);
  });

  test('bad entries: each named with its problem, the good ones still listed, not ok', async () => {
    const r = await validateModelsFile(file('bad.yaml', 'models:\n  a:\n    image: a:dev\n  b:\n    image: b:dev\n    batch_size: -1\n  c:\n    colour: red\n'));
    expect(r.ok).toBe(false);
    expect(r.text).toMatch(/model "b": field "batch_size" must be an integer >= 0 \(0: a non-batching model\) \(got -1\)/);
    expect(r.text).toMatch(/model "c"[^\n]*colour/);
    expect(r.text).toContain('ok  a (image a:dev)');
    expect(r.text).toMatch(/: 2 problem\(s\), 1 valid model\(s\)\n$/);
  });

  test('YAML syntax errors and missing files', async () => {
    const syntax = await validateModelsFile(file('syntax.yaml', 'models:\n  a: [\n'));
    expect(syntax.ok).toBe(false);
    expect(syntax.text).toMatch(/YAML syntax error at line \d+/);
    const missing = await validateModelsFile(path.join(dir, 'nope.yaml'));
    expect(missing).toEqual({ ok: false, text: expect.stringMatching(/nope\.yaml: not found/) });
  });
});

describe('tensorbroker init model', () => {
  let dir: string;
  beforeAll(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-init-')); });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('refuses a bad model name, an unknown language and a non-empty folder', () => {
    expect(() => initModel('bad name', { lang: 'node', dir: path.join(dir, 'x') })).toThrow(/model name "bad name" is invalid/);
    expect(() => initModel('ok', { lang: 'rust' as 'node', dir: path.join(dir, 'y') })).toThrow(/--lang must be one of node, python/);
    fs.mkdirSync(path.join(dir, 'full'));
    fs.writeFileSync(path.join(dir, 'full', 'keep.txt'), 'mine');
    expect(() => initModel('ok', { lang: 'python', dir: path.join(dir, 'full') })).toThrow(/is not empty/);
    expect(fs.readdirSync(path.join(dir, 'full'))).toEqual(['keep.txt']);
  });

  test('fills every placeholder: names, class, lower-case image and npm name, SDK spec', () => {
    const node = initModel('Edge.Detector-2', { lang: 'node', dir: path.join(dir, 'node'), sdk: '^0.1.0' });
    const py = initModel('edge_detector', { lang: 'python', dir: path.join(dir, 'py') });
    for (const r of [node, py]) {
      for (const f of r.files) expect(fs.readFileSync(path.join(r.dir, f), 'utf8')).not.toMatch(/__[A-Z]+__/);
    }
    const pkg = JSON.parse(fs.readFileSync(path.join(node.dir, 'package.json'), 'utf8'));
    expect(pkg).toMatchObject({ name: 'edge.detector-2', dependencies: { '@tensorbroker/sdk': '^0.1.0' } });
    expect(fs.readFileSync(path.join(node.dir, 'models.yaml'), 'utf8')).toMatch(/^ {2}Edge\.Detector-2:\n {4}image: edge\.detector-2:dev/m);
    expect(fs.readFileSync(path.join(py.dir, 'model.py'), 'utf8')).toContain('class EdgeDetector(Model):');
    expect(node.files).toContain('.gitignore');
  });
});

test('formatTable: columns padded to the widest cell, header upper-cased, no trailing spaces', () => {
  expect(formatTable(['model', 'phase'], [['a', 'READY'], ['longer', '']])).toBe('MODEL   PHASE\na       READY\nlonger\n');
});
