/**
 * onnxruntime-node is an optional dependency that only the text-detector example loads,
 * on first use. Without it the rest of the tree loads, and the detector says how to get it.
 */
describe('text-detector without onnxruntime-node', () => {
  afterEach(() => {
    jest.dontMock('onnxruntime-node');
    jest.resetModules();
  });

  test('the module loads; creating a detector fails with an error naming the optional dependency and the fix', async () => {
    jest.doMock('onnxruntime-node', () => {
      throw Object.assign(new Error("Cannot find module 'onnxruntime-node'"), { code: 'MODULE_NOT_FOUND' });
    });
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { TextDetector } = require('../../examples/models/text-detector/detector') as typeof import('../../examples/models/text-detector/detector');
    await expect(TextDetector.create({ modelPath: '/nonexistent.onnx' }))
      .rejects.toThrow(/needs onnxruntime-node, an optional dependency that is not installed \(Cannot find module 'onnxruntime-node'\): run `npm install --include=optional`/);
  });

  test('with onnxruntime-node installed, the real package is used', async () => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { TextDetector, defaultModelPath } = require('../../examples/models/text-detector/detector') as typeof import('../../examples/models/text-detector/detector');
    const d = await TextDetector.create({ modelPath: defaultModelPath(), size: 64, threads: 1 });
    expect(d.provider).toBe('cpu');
    expect(d.session.inputNames).toHaveLength(1);
    await d.session.release();
  });
});
