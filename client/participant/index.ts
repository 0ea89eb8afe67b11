export { ParticipantRound, type LocalResult, type ParticipantHost, type ParticipantRoundOptions, type RoundState, type SecAggNotice } from './round.js';
export { dumpContributions, type ClientObservers, type ClientRoundSummary, type ContributionObservation } from './observe.js';
