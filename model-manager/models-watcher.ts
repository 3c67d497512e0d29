/**
 * Live models.yaml: the broker watches its models file and applies each saved
 * edit as admin changes are applied (registry.reload: same validation, same
 * precedence: admin-API entries still win). A file that does not parse is
 * logged and ignored as a whole; an entry that is invalid is logged and its
 * last good version stays (the registry leaves its record and command alone).
 *
 * The folder is watched, not the file: editors save by writing a new file
 * and renaming it over the old one, which ends a watch on the old inode.
 * Events are debounced (an editor's save is several events).
 */
import { watch, type FSWatcher } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { loadModelsFile, type ModelsFile } from './models-file';

export interface ModelsWatcher {
  /** Resolves when the edits seen so far are applied (for tests and shutdown). */
  settled(): Promise<void>;
  close(): Promise<void>;
}

export function watchModelsFile(
  filePath: string,
  apply: (file: ModelsFile) => Promise<void>,
  logger: Logger,
  debounceMs = 150,
): ModelsWatcher {
  const abs = path.resolve(filePath);
  const log = logger.child({ component: 'models-watcher', file: abs });
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> = Promise.resolve();
  let closed = false;

  const reload = async () => {
    const file = await loadModelsFile(abs);
    if (!file.ok) {
      for (const e of file.errors) log.error(e);
      log.error('models file edit ignored: it does not parse; the models stay as they were');
      return;
    }
    for (const e of file.errors) log.error(e);
    if (file.invalid.length > 0) log.warn({ invalid: file.invalid }, 'invalid entries ignored: their last good version stays');
    await apply(file);
    log.info({ models: file.specs.length, invalid: file.invalid.length }, 'models file edit applied');
  };

  const trigger = () => {
    if (closed) return;
    clearTimeout(timer);
    timer = setTimeout(() => {
      running = running.then(reload).catch((err: unknown) => log.error({ err }, 'applying the models file edit failed; will retry on the next edit'));
    }, debounceMs);
  };

  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(path.dirname(abs), (_event, name) => {
      if (name === null || name.toString() === path.basename(abs)) trigger();
    });
    watcher.on('error', (err) => log.error({ err }, 'watching the models file failed; edits need a restart'));
    log.info('watching the models file: edits apply live');
  } catch (err) {
    log.error({ err }, 'cannot watch the models file; edits need a restart');
  }

  return {
    settled: () => running,
    async close() {
      closed = true;
      clearTimeout(timer);
      watcher?.close();
      await running;
    },
  };
}
