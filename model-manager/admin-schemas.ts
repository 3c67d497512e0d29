/**
 * Fastify schemas of the admin routes, from the same TypeBox schemas as
 * models.yaml (schema.ts), and the validator that checks them with TypeBox
 * and words each problem as the file loader does ("field "x" must be ...").
 */
import { Type, type TObject, type TSchema } from '@sinclair/typebox';
import type { FastifyRequest } from 'fastify';
import { ENTRY_FIELDS, checkModelName, fieldErrors, show } from './schema';
import { ModelValidationError } from './stored-registry';

const JsonObject = (description: string) => Type.Object({}, { additionalProperties: true, description });

export const NameParams = Type.Object({ name: Type.String({ description: 'model name' }) });

/** PUT: a whole entry. `name` (must match) and `source` (ignored) are accepted as GET returns them. */
export const PutBody = Type.Object(
  { ...Object.fromEntries(Object.entries(ENTRY_FIELDS).map(([k, s]) => [k, Type.Optional(s)])), name: Type.Optional(Type.String()), source: Type.Optional(Type.String()) },
  { additionalProperties: false, description: 'the model entry (the fields of models.yaml, minus command)' },
);

/** PATCH: a JSON merge patch; each field is checked after merging (null resets a field). */
export const PatchBody = JsonObject('the fields to change (JSON merge patch: null resets a field to its default)');

export const ScaleBody = Type.Object({ replicas: Type.Integer({ minimum: 0, description: 'an integer >= 0' }) }, { additionalProperties: false });

/**
 * Validator compiler for the admin plugin: params, then the body. A body that
 * is not a JSON object, or whose fields are wrong, gives a ModelValidationError
 * (400) without the model label; `labelled` adds it in a preHandler.
 */
export function compileValidator({ schema, httpPart }: { schema: unknown; httpPart?: string }) {
  const s = schema as TSchema;
  return (data: unknown) => {
    if (httpPart === 'params') {
      const name = (data as { name?: unknown } | null)?.name;
      const bad = checkModelName(name);
      return bad ? { error: new ModelValidationError([bad]) } : { value: data };
    }
    if (typeof data !== 'object' || data === null || Array.isArray(data)) {
      return { error: new ModelValidationError([`the body must be a JSON object (got ${show(data)})`]) };
    }
    const props = (s as TObject).properties ?? {};
    const errors = Object.keys(props).length > 0 || s.additionalProperties === false
      ? fieldErrors(props as Record<string, TSchema>, data as Record<string, unknown>, (s as TObject).required ?? [])
      : [];
    return errors.length > 0 ? { error: new ModelValidationError(errors) } : { value: data };
  };
}

/** In a preHandler: throw the validation error, each message prefixed with the model it concerns. */
export function throwValidation(req: FastifyRequest): void {
  const err = req.validationError;
  if (!err) return;
  const name = (req.params as { name?: string }).name;
  if (err instanceof ModelValidationError) {
    if ((err as { validationContext?: string }).validationContext === 'params') throw err;
    throw new ModelValidationError(err.errors.map((e) => `model ${show(name)}: ${e}`));
  }
  throw err;
}
