package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/rbee/rbee/wsapi"
)

func keygenCommand() *cli.Command {
	return &cli.Command{
		Name:  "keygen",
		Usage: "print a new random cluster key (rbee keygen > key; chmod 600 key)",
		Action: func(c *cli.Context) error {
			k, err := wsapi.GenerateKey()
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(c.App.Writer, k.String())
			return err
		},
	}
}

func tokenCommand() *cli.Command {
	return &cli.Command{
		Name:  "token",
		Usage: "print the HTTP token derived from the cluster key: for API clients and the dashboard (?token=) on other machines",
		Flags: keyFlags(),
		Action: func(c *cli.Context) error {
			k, err := loadKey(c)
			if err != nil {
				return err
			}
			if k.IsZero() {
				return fmt.Errorf("no cluster key given (--cluster-key-file): a cluster without a key needs no token")
			}
			_, err = fmt.Fprintln(c.App.Writer, k.HTTPToken())
			return err
		},
	}
}
