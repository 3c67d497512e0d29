/**
 * Builds the offline base and the example model images once per test file (docker tests).
 * Each image carries the hash of its inputs (build context + base image id) in a label;
 * an image whose label does not match what this checkout would build (e.g. a
 * tensorbroker/<model>:dev left by another checkout, or built before the last
 * `npm run build`) is rebuilt, so the tests never run a stale image.
 */
import { OFFLINE_BASE, buildExampleImages, EXAMPLE_MODELS } from '../../examples/build-images';

let building: Promise<string[]> | undefined;

/**
 * Ensures tb-node-base:local and tensorbroker/<model>:dev match this checkout. Needs
 * `npm run build` (the images hold dist/). TB_REBUILD_IMAGES=1 rebuilds them anyway.
 */
export function ensureTestImages(models: string[] = EXAMPLE_MODELS): Promise<string[]> {
  building ??= buildExampleImages({
    baseImage: process.env.TB_BASE_IMAGE ?? OFFLINE_BASE,
    models,
    force: process.env.TB_REBUILD_IMAGES === '1',
    log: (msg) => { if (process.env.TB_IMAGES_VERBOSE) process.stderr.write(`[images] ${msg}\n`); },
  });
  return building;
}
