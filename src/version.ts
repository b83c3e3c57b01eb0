/** The agent's version, reported in status and logs. Kept apart so the CLI can print it without loading the daemon. */
export const AGENT_VERSION = '0.1.0';
