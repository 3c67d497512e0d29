/**
 * Every Redis key of the model registry, built in one place.
 *
 *   {prefix}model:{name}   string: JSON record of one model (ModelSpec minus command/cwd)
 *   {prefix}models         set: names of all models
 *   {prefix}events         pub/sub channel: {"type":"put"|"delete","name":...}
 */
export const DEFAULT_PREFIX = 'tb:';

export interface RegistryKeys {
  prefix: string;
  model(name: string): string;
  models: string;
  events: string;
}

export function registryKeys(prefix: string = DEFAULT_PREFIX): RegistryKeys {
  return {
    prefix,
    model(name: string): string {
      if (name.length === 0 || name.includes(':')) {
        throw new Error(`model name ${JSON.stringify(name)} cannot be used as a Redis key part (empty or contains ':')`);
      }
      return `${prefix}model:${name}`;
    },
    models: `${prefix}models`,
    events: `${prefix}events`,
  };
}
