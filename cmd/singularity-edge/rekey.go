package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/singularity-ng/singularity-edge/storage"
)

// dbRekeyJSON is what `db rekey --output json` prints.
type dbRekeyJSON struct {
	DataDir      string `json:"data_dir"`
	Certificates int    `json:"certificates"`
}

// rekeyCommand is `db rekey`: seal every stored private key of a stopped
// store again with a new encryption key. Both keys come from the environment
// only, like every secret.
func (o *dbOptions) rekeyCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "rekey",
		Short: "Seal the stored private keys of a stopped agent with a new encryption key",
		Long: `Seal every stored private key in --data-dir again with the key in
EDGE_NEW_ENCRYPTION_KEY, after opening them with the current key in
EDGE_ENCRYPTION_KEY, and make the store open with the new key only. Row
versions are kept and nothing is replicated. The agent must be stopped.

Sealed keys travel between agents, so every agent of a cluster is rekeyed
while all are stopped and all start with the new key
(docs/runbooks/rotating-secrets.md). Backups taken before keep the old key.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, asJSON, err := o.localCommand(cmd)
			if err != nil {
				return err
			}
			if !hasStore(dir) {
				return withExitCode(exitNotFound, fmt.Errorf("no store in %s; set --data-dir (or EDGE_DATA_DIR) to the agent's data directory", dir))
			}
			cfg, err := storeConfig(dir)
			if err != nil {
				return err
			}
			if cfg.EncryptionKey == nil {
				return withExitCode(exitUsage, errors.New("set EDGE_ENCRYPTION_KEY to the store's current key"))
			}
			raw := os.Getenv("EDGE_NEW_ENCRYPTION_KEY")
			if raw == "" {
				return withExitCode(exitUsage, errors.New("set EDGE_NEW_ENCRYPTION_KEY to the new key (openssl rand -hex 32)"))
			}
			newKey, err := storage.ParseEncryptionKey(raw)
			if err != nil {
				return withExitCode(exitUsage, fmt.Errorf("EDGE_NEW_ENCRYPTION_KEY: %w", err))
			}
			res, err := storage.Rekey(cfg, newKey)
			if err != nil {
				return localError(dir, err)
			}
			out := dbRekeyJSON{DataDir: dir, Certificates: res.Certificates}
			w := cmd.OutOrStdout()
			return emit(w, asJSON, out, func() error {
				_, err := fmt.Fprintf(w, "Sealed %d private keys again in %s. Start the agent with EDGE_ENCRYPTION_KEY set to the new key.\n",
					out.Certificates, out.DataDir)
				return err
			})
		},
	}
}
