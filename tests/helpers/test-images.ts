/**
 * Test-only images on top of the example images (never pulled):
 *   tensorbroker/test-hog:dev   tests/fixtures/hog-model.ts on tensorbroker/simple:dev's tree
 *   tensorbroker/simple:v2      tensorbroker/simple:dev tagged again (a "new version" for rolls)
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ts from 'typescript';
import { INPUTS_LABEL, imageId, imageLabel, imageTag, inputsHash } from '../../examples/build-images';
import { ensureTestImages } from './images';

const ROOT = path.resolve(__dirname, '..', '..');
export const HOG_IMAGE = imageTag('test-hog');
/** simple:dev tagged again; with TB_IMAGE_TAG=x, simple:v2-x. */
export const SIMPLE_V2 = `tensorbroker/simple:v2${process.env.TB_IMAGE_TAG ? `-${process.env.TB_IMAGE_TAG}` : ''}`;

let built: Promise<void> | undefined;

/** simple:dev (checked by ensureTestImages), simple:v2 as its second tag, and the hog image on top, rebuilt when its inputs change. */
export function ensureTaskManagerImages(): Promise<void> {
  built ??= (async () => {
    await ensureTestImages(['simple', 'sleepy']);
    execFileSync('docker', ['tag', imageTag('simple'), SIMPLE_V2]);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-hog-'));
    try {
      const src = fs.readFileSync(path.join(ROOT, 'tests/fixtures/hog-model.ts'), 'utf8');
      const js = ts.transpileModule(src, { compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022 } }).outputText;
      fs.writeFileSync(path.join(dir, 'hog-model.js'), js);
      fs.writeFileSync(
        path.join(dir, 'Dockerfile'),
        `FROM ${imageTag('simple')}\nCOPY hog-model.js /app/dist/tests/fixtures/hog-model.js\nCMD ["node", "dist/tests/fixtures/hog-model.js"]\n`,
      );
      const inputs = inputsHash(dir, imageId(imageTag('simple')));
      if (imageLabel(HOG_IMAGE, INPUTS_LABEL) === inputs && process.env.TB_REBUILD_IMAGES !== '1') return;
      execFileSync('docker', ['build', '--pull=false', '-q', '--label', `${INPUTS_LABEL}=${inputs}`, '-t', HOG_IMAGE, dir],
        { env: { ...process.env, DOCKER_BUILDKIT: '0' }, stdio: 'ignore' });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  })();
  return built;
}
