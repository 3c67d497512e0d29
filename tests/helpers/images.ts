/** Builds the offline base and the example model images once per test run (docker tests). */
import { OFFLINE_BASE, buildExampleImages, imageExists, imageTag, EXAMPLE_MODELS } from '../../examples/build-images';

let building: Promise<string[]> | undefined;

/**
 * Ensures tb-node-base:local and tensorbroker/<model>:dev exist. Needs `npm run build`
 * (the images hold dist/). Set TB_REBUILD_IMAGES=1 to rebuild images that exist.
 */
export function ensureTestImages(models: string[] = EXAMPLE_MODELS): Promise<string[]> {
  if (!building) {
    const missing = process.env.TB_REBUILD_IMAGES === '1' ? models : models.filter((m) => !imageExists(imageTag(m)));
    building = missing.length === 0
      ? Promise.resolve(models.map(imageTag))
      : buildExampleImages({
        baseImage: process.env.TB_BASE_IMAGE ?? OFFLINE_BASE,
        models: missing,
        log: (msg) => { if (process.env.TB_IMAGES_VERBOSE) process.stderr.write(`[images] ${msg}\n`); },
      }).then(() => models.map(imageTag));
  }
  return building;
}
