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
