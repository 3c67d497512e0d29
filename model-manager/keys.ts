/**
 * Every Redis key of the model registry, built in one place.
 *
 *   {prefix}model:{name}   string: JSON record of one model (ModelSpec minus command/cwd)
 *   {prefix}models         set: names of all models
 *   {prefix}events         pub/sub channel: {"type":"put"|"delete","name":...}
 *   {prefix}registry       string: the mark a writer sets; missing = Redis lost its data
 *   {prefix}metadata:{name} string: JSON metadata of the model's last READY
 */
export const DEFAULT_PREFIX = 'tb:';

export interface RegistryKeys {
  prefix: string;
  model(name: string): string;
  models: string;
  events: string;
  mark: string;
  metadata(name: string): string;
}

export function registryKeys(prefix: string = DEFAULT_PREFIX): RegistryKeys {
  const part = (name: string): string => {
    if (name.length === 0 || name.includes(':')) {
      throw new Error(`model name ${JSON.stringify(name)} cannot be used as a Redis key part (empty or contains ':')`);
    }
    return name;
  };
  return {
    prefix,
    model: (name: string) => `${prefix}model:${part(name)}`,
    models: `${prefix}models`,
    events: `${prefix}events`,
    mark: `${prefix}registry`,
    metadata: (name: string) => `${prefix}metadata:${part(name)}`,
  };
}
