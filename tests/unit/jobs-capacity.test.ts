/** The job runner's share of a model's capacity (jobs/capacity.ts) and the --jobs-live-reserve parser. */
import { jobSlots, parseLiveReserve, reserveFor } from '../../jobs/capacity';

const base = { copies: 2, batchSize: 8, inScheduler: 0, jobsInFlight: 0, liveReserve: 0, maxInFlight: 0 };

test('by default jobs take what live traffic leaves idle: copies x batch size, less live requests', () => {
  expect(jobSlots(base)).toBe(16);
  expect(jobSlots({ ...base, inScheduler: 5 })).toBe(11); // 5 live requests
  expect(jobSlots({ ...base, inScheduler: 9, jobsInFlight: 4 })).toBe(7); // 4 of the 9 are our jobs
  expect(jobSlots({ ...base, inScheduler: 40 })).toBe(0); // a live queue: no job starts
});

test('a live reserve keeps its share free of jobs even when live traffic is idle', () => {
  expect(jobSlots({ ...base, liveReserve: 0.25 })).toBe(12);
  expect(jobSlots({ ...base, liveReserve: 0.25, inScheduler: 12, jobsInFlight: 12 })).toBe(0);
  expect(jobSlots({ ...base, liveReserve: 0.25, inScheduler: 6 })).toBe(10); // idle capacity is the tighter bound
});

test('while live traffic is active, jobs start only alongside waiting live requests (never a batch of their own)', () => {
  expect(jobSlots({ ...base, liveRecently: true })).toBe(0); // a gap between live requests
  expect(jobSlots({ ...base, liveRecently: true, inScheduler: 3 })).toBe(13); // 3 live waiting: jobs fill their batch
  expect(jobSlots({ ...base, liveRecently: false })).toBe(16); // live paused: all idle capacity
});

test('a reserve leaving less than one row: one job at a time, only while no live request is in the model', () => {
  const one = { ...base, copies: 1, batchSize: 1, liveReserve: 0.5 };
  expect(jobSlots(one)).toBe(1);
  expect(jobSlots({ ...one, inScheduler: 1 })).toBe(0);
  expect(jobSlots({ ...one, inScheduler: 1, jobsInFlight: 1 })).toBe(0);
});

test('no ready copy: one job at a time (it waits for the copy the backlog asked for); the hard cap applies', () => {
  expect(jobSlots({ ...base, copies: 0 })).toBe(1);
  expect(jobSlots({ ...base, copies: 0, jobsInFlight: 1 })).toBe(0);
  expect(jobSlots({ ...base, maxInFlight: 3 })).toBe(3);
  expect(jobSlots({ ...base, maxInFlight: 3, jobsInFlight: 3 })).toBe(0);
});

test('parseLiveReserve: a default and per-model shares, in [0, 1)', () => {
  const r = parseLiveReserve('0.25, ocr=0.5,detector=0');
  expect(r).toEqual({ default: 0.25, models: { ocr: 0.5, detector: 0 } });
  expect(reserveFor(r, 'ocr')).toBe(0.5);
  expect(reserveFor(r, 'other')).toBe(0.25);
  expect(parseLiveReserve('0')).toEqual({ default: 0, models: {} });
  expect(() => parseLiveReserve('1')).toThrow(/\[0, 1\)/);
  expect(() => parseLiveReserve('ocr=-0.1')).toThrow(/ocr/);
  expect(() => parseLiveReserve('=0.3')).toThrow(/names no model/);
  expect(() => parseLiveReserve('half')).toThrow(/not a share/);
});
