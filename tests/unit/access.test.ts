/** The access policy table (bridges/shared/access.ts) and the REST route classes, without a server. */
import { AccessControl, credentialOf, isLoopback, withoutLogLines } from '../../bridges/shared/access';
import { bounded } from '../../bridges/shared/bounded';
import { classOf } from '../../bridges/rest/access-hook';
import { peerAddress } from '../../bridges/grpc/caller';

const LOCAL = '127.0.0.1';
const REMOTE = '10.1.2.3';

describe('AccessControl', () => {
  test('nothing configured: inference and open calls for everyone, control from loopback only', () => {
    const a = new AccessControl();
    expect(a.check('open', { address: REMOTE })).toBeUndefined();
    expect(a.check('infer', { address: REMOTE })).toBeUndefined();
    expect(a.check('admin', { address: LOCAL })).toBeUndefined();
    expect(a.check('admin', { address: '::1' })).toBeUndefined();
    expect(a.check('admin', { address: '::ffff:127.0.0.1' })).toBeUndefined();
    expect(a.check('admin', { address: REMOTE })?.code).toBe('PERMISSION_DENIED');
    expect(a.check('admin', { address: undefined })?.code).toBe('PERMISSION_DENIED');
  });

  test('with an admin token, control needs it, from loopback too', () => {
    const a = new AccessControl({ adminToken: 'adm' });
    expect(a.check('admin', { address: LOCAL })?.code).toBe('UNAUTHENTICATED');
    expect(a.check('admin', { address: LOCAL, credential: 'nope' })?.code).toBe('UNAUTHENTICATED');
    expect(a.check('admin', { address: REMOTE, credential: 'adm' })).toBeUndefined();
    expect(a.check('infer', { address: REMOTE })).toBeUndefined(); // no API keys: inference open
    expect(a.seesAdminDetails({ address: LOCAL })).toBe(false);
    expect(a.seesAdminDetails({ address: LOCAL, credential: 'adm' })).toBe(true);
  });

  test('with API keys, inference needs a key (or the admin token); a key does not open control', () => {
    const a = new AccessControl({ adminToken: 'adm', apiKeys: ['k1', 'k2'] });
    expect(a.check('infer', { address: LOCAL })?.code).toBe('UNAUTHENTICATED');
    expect(a.check('infer', { address: LOCAL, credential: 'k3' })?.code).toBe('UNAUTHENTICATED');
    expect(a.check('infer', { address: LOCAL, credential: 'k2' })).toBeUndefined();
    expect(a.check('infer', { address: LOCAL, credential: 'adm' })).toBeUndefined();
    expect(a.check('admin', { address: LOCAL, credential: 'k1' })?.code).toBe('PERMISSION_DENIED');
    expect(a.check('open', {})).toBeUndefined();
  });

  test('empty keys and an empty token count as none', () => {
    const a = new AccessControl({ adminToken: '', apiKeys: [''] });
    expect(a.inferenceKeyed).toBe(false);
    expect(a.adminConfigured).toBe(false);
    expect(a.check('admin', { address: LOCAL, credential: '' })).toBeUndefined();
  });
});

test('credentials: Bearer or x-api-key, first value of a list', () => {
  expect(credentialOf('Bearer abc', undefined)).toBe('abc');
  expect(credentialOf('bearer  abc ', undefined)).toBe('abc');
  expect(credentialOf(undefined, 'k')).toBe('k');
  expect(credentialOf(['Bearer x', 'Bearer y'], undefined)).toBe('x');
  expect(credentialOf('Basic zzz', undefined)).toBeUndefined();
  expect(credentialOf(undefined, Buffer.from('bin'))).toBe('bin');
});

test('loopback and gRPC peer addresses', () => {
  expect(isLoopback('127.9.9.9')).toBe(true);
  expect(isLoopback('[::1]')).toBe(true);
  expect(isLoopback('::2')).toBe(false);
  expect(isLoopback('128.0.0.1')).toBe(false);
  expect(peerAddress('127.0.0.1:5000')).toBe('127.0.0.1');
  expect(peerAddress('ipv4:10.0.0.1:5000')).toBe('10.0.0.1');
  expect(peerAddress('[::1]:5000')).toBe('::1');
  expect(peerAddress('ipv6:[::ffff:127.0.0.1]:5000')).toBe('::ffff:127.0.0.1');
});

test('REST route classes', () => {
  expect(classOf('POST', '/v2/models/:model/infer')).toBe('infer');
  expect(classOf('POST', '/v2/models/:model/versions/:version/infer')).toBe('infer');
  expect(classOf('GET', '/v2/models/:model/sequences')).toBe('admin');
  expect(classOf('POST', '/v2/repository/models/:model/load')).toBe('admin');
  expect(classOf('POST', '/v2/repository/models/:model/unload')).toBe('admin');
  expect(classOf('GET', '/admin/instances')).toBe('admin');
  expect(classOf('POST', '/v2/repository/index')).toBe('open');
  expect(classOf('GET', '/v2/models/:model')).toBe('open');
  expect(classOf('GET', undefined)).toBe('open');
});

test('crash log lines are cut from reasons; messages are bounded', () => {
  const reason = 'unavailable: 3 copy failures within 60000 ms (max_failures 3); last: model copy ab12 of m exited with code 7: boom KEY=abc (exit code 7); last log lines: DB_PASSWORD=hunter2 | boom';
  const cut = withoutLogLines(reason);
  expect(cut).not.toContain('hunter2');
  expect(cut).not.toContain('KEY=abc');
  expect(cut).toContain('exited with code 7: (log line hidden) (exit code 7)');
  expect(withoutLogLines('model copy c1 of m killed by SIGKILL: last words')).toBe('model copy c1 of m killed by SIGKILL: (log line hidden)');
  expect(withoutLogLines('model copy c1 of m exited (code 2): x; more')).toBe('model copy c1 of m exited (code 2): (log line hidden)');
  expect(withoutLogLines('no lines here')).toBe('no lines here');
  const long = 'x'.repeat(20_000_000);
  const b = bounded(long);
  expect(b.length).toBeLessThan(600);
  expect(b).toContain('more characters');
  expect(bounded('short')).toBe('short');
});
