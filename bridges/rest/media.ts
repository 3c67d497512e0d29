/** Content types and encodings of request bodies. */
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { BrokerError } from '../../core/errors';

/** 415 Unsupported Media Type. */
export class UnsupportedMediaType extends BrokerError {
  constructor(message: string) {
    super('UNSUPPORTED_MEDIA_TYPE', message);
  }
}

/** The media type of a Content-Type header, lower case, without parameters ('' when absent). */
export function mediaType(header: string | undefined): string {
  return (header ?? '').split(';')[0].trim().toLowerCase();
}

/** Image uploads decoded into a UINT8 [N, H, W, 3] tensor (image/jpg is a common misspelling). */
export const IMAGE_TYPES = new Set(['image/jpeg', 'image/jpg', 'image/png', 'image/webp']);

/**
 * Media types read as a KServe JSON body. No Content-Type and octet-stream
 * are what tritonclient and fetch(Buffer) send; form-urlencoded is curl's
 * default for `-d`.
 */
export function isJsonType(type: string): boolean {
  return type === '' || type === 'application/json' || (type.startsWith('application/') && type.endsWith('+json')) ||
    type === 'application/octet-stream' || type === 'application/x-www-form-urlencoded';
}

export type BodyEncoding = 'gzip' | 'deflate';

/** The Content-Encoding of a request: undefined for none/identity, 415 for anything but gzip or deflate. */
export function bodyEncoding(header: string | string[] | undefined): BodyEncoding | undefined {
  if (header === undefined) return undefined;
  const value = (Array.isArray(header) ? header.join(',') : header).toLowerCase();
  const codings = value.split(',').map((s) => s.trim()).filter((s) => s !== '' && s !== 'identity');
  if (codings.length === 0) return undefined;
  if (codings.length > 1) throw new UnsupportedMediaType(`Content-Encoding '${value.trim()}': one coding at most (gzip or deflate)`);
  const c = codings[0];
  if (c === 'gzip' || c === 'x-gzip') return 'gzip';
  if (c === 'deflate') return 'deflate';
  throw new UnsupportedMediaType(`Content-Encoding '${c}' is not supported: use gzip, deflate or identity`);
}

const gunzip = promisify(zlib.gunzip);
const inflate = promisify(zlib.inflate);
const inflateRaw = promisify(zlib.inflateRaw);

/** HTTP's "deflate" is the zlib format (RFC 1950); some clients send raw deflate (RFC 1951): told apart by the header. */
function hasZlibHeader(b: Buffer): boolean {
  return b.length >= 2 && (b[0] & 0x0f) === 8 && (b[0] >> 4) <= 7 && ((b[0] << 8) | b[1]) % 31 === 0;
}

/**
 * Decompresses a body in zlib's thread pool; the output is bounded by `limit`
 * (413 beyond, so a small bomb cannot grow past the body limit); a bad stream is a 400.
 */
export async function decodeBody(body: Buffer, encoding: BodyEncoding, limit: number): Promise<Buffer> {
  const opts = { maxOutputLength: limit };
  try {
    if (encoding === 'gzip') return await gunzip(body, opts);
    return await (hasZlibHeader(body) ? inflate(body, opts) : inflateRaw(body, opts));
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ERR_BUFFER_TOO_LARGE') {
      throw new BrokerError('PAYLOAD_TOO_LARGE', `the ${encoding}-decoded body is larger than the limit of ${limit} bytes`);
    }
    throw new BrokerError('INVALID_ARGUMENT', `the ${encoding} body could not be decoded: ${err.message}`);
  }
}
