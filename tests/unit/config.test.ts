import { OPTIONS, resolveConfig } from '../../app/config';

describe('resolveConfig', () => {
  test('defaults: no Redis (embedded registry), live models.yaml, the former stray knobs', () => {
    const c = resolveConfig({}, {});
    expect(c.redisUrl).toBe('');
    expect(c.registryFile).toBe('');
    expect(c.watchModels).toBe(true);
    expect(c.redisReadOnly).toBe(false);
    expect(c.maxVideoBytes).toBe(1024 * 1024 * 1024);
    expect(c.zmqCloseGraceMs).toBe(5000);
    expect(c.zmqMaxConnections).toBe(1024);
    expect(c.ffmpeg).toBe('ffmpeg');
    expect(c.adminToken).toBeUndefined();
  });

  test('flag > env > default; booleans parsed; secrets from the environment only', () => {
    const env = { TB_REDIS_URL: 'redis://env:6379', TB_REDIS_READ_ONLY: 'yes', TB_FFMPEG: '/opt/ffmpeg', TB_REDIS_SIGNING_KEY: 'k', TB_REGISTRY_PASSWORD: 'p', TB_ADMIN_TOKEN: 't' };
    const c = resolveConfig({ redisUrl: 'redis://flag:6379', watchModels: 'false' }, env);
    expect(c).toMatchObject({ redisUrl: 'redis://flag:6379', redisReadOnly: true, watchModels: false, ffmpeg: '/opt/ffmpeg', redisSigningKey: 'k', registryPassword: 'p', adminToken: 't' });
    expect(Object.values(OPTIONS).map(([flag]) => flag).join(' ')).not.toMatch(/password|signing|token/i);
  });

  test('a bad value names the flag and the variable', () => {
    expect(() => resolveConfig({}, { TB_WATCH_MODELS: 'maybe' })).toThrow("--watch-models / TB_WATCH_MODELS: 'maybe' is not a boolean (true or false)");
  });
});
