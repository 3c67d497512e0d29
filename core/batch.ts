/** Per-row sequence control data carried to the model (stateful models): link SequenceControl. */
export interface SequenceControl {
  id: string;
  slot: number;
  start: boolean;
  end: boolean;
}
