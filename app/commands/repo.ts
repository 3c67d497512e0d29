/** The Tensor Broker checkout this command runs from (source or dist/): templates and SDK sources live there. */
import fs from 'node:fs';
import path from 'node:path';

export function repoRoot(from = __dirname): string {
  for (let dir = from; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, 'package.json')) && fs.existsSync(path.join(dir, 'examples', 'templates'))) return dir;
  }
  throw new Error(`the Tensor Broker checkout (with examples/templates) was not found above ${from}`);
}
