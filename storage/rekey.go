package storage

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/linxGnu/grocksdb"
	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers Rekey rewrites: the record inside a row envelope, and the
// sealed private key inside a certificate record (see codec.go).
const (
	rowFieldRecord         protowire.Number = 5
	certFieldSealedPrivKey protowire.Number = 5
)

// RekeyResult says what Rekey changed.
type RekeyResult struct {
	Certificates int // certificates whose private key was sealed again
}

// Rekey seals every stored private key of the stopped store in cfg.Dir again
// with newKey, and replaces the store's key check, in one synced write: after
// it the store opens with newKey only. cfg.EncryptionKey must be the current
// key (Open checks it against the key check).
//
// Row versions are kept and nothing enters the change log: this is a local
// re-encryption of the same data, not a change to replicate. Fields this
// version does not know are carried over byte for byte. Backups and exports
// taken before stay sealed with the old key.
//
// Sealed keys travel between agents in change sets, so every agent of a
// cluster must be rekeyed while all are stopped, and all restarted with the
// new key (docs/runbooks/rotating-secrets.md).
func Rekey(cfg Config, newKey []byte) (RekeyResult, error) {
	var res RekeyResult
	if cfg.EncryptionKey == nil {
		return res, fmt.Errorf("%w: the current key is needed to open the stored private keys (EDGE_ENCRYPTION_KEY)", ErrEncryptionKey)
	}
	if newKey == nil {
		return res, fmt.Errorf("%w: no new key", ErrEncryptionKey)
	}
	if bytes.Equal(newKey, cfg.EncryptionKey) {
		return res, fmt.Errorf("%w: the new key is the current key", ErrInvalid)
	}
	next, err := newKeyring(newKey)
	if err != nil {
		return res, err
	}
	s, err := Open(cfg)
	if err != nil {
		return res, err
	}
	werr := s.rekey(next, &res)
	if cerr := s.Close(); werr == nil {
		werr = cerr
	}
	return res, werr
}

func (s *Store) rekey(next *keyring, res *RekeyResult) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	batch := grocksdb.NewWriteBatch()
	defer batch.Destroy()

	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	ro.SetVerifyChecksums(true)
	cf := s.cfs[TableCertificates]
	it := s.base.NewIteratorCF(ro, cf)
	defer it.Close()
	for it.SeekToFirst(); it.Valid(); it.Next() {
		raw := it.Value().Data()
		r, err := decodeRow(raw)
		if err != nil {
			return corruptError(TableCertificates, err)
		}
		if r.deleted {
			continue
		}
		c, sealed, err := decodeCertificate(r.rec)
		if err != nil {
			return corruptError(TableCertificates, err)
		}
		if sealed == nil {
			continue
		}
		pem, err := s.keys.openPrivateKey(c.ID, sealed)
		if err != nil {
			return err
		}
		resealed, err := next.sealPrivateKey(c.ID, pem)
		if err != nil {
			return err
		}
		rec, err := replaceBytesField(r.rec, certFieldSealedPrivKey, resealed)
		if err != nil {
			return corruptError(TableCertificates, err)
		}
		body, err := replaceBytesField(raw[1:], rowFieldRecord, rec)
		if err != nil {
			return corruptError(TableCertificates, err)
		}
		batch.PutCF(cf, bytes.Clone(it.Key().Data()), append([]byte{raw[0]}, body...))
		res.Certificates++
	}
	if err := it.Err(); err != nil {
		return corruptError(TableCertificates, err)
	}
	check, err := next.seal(aadKeyCheck, []byte(keyCheckPlain))
	if err != nil {
		return err
	}
	batch.PutCF(s.cfs[cfMeta], []byte(metaKeyCheck), check)

	wo := grocksdb.NewDefaultWriteOptions()
	defer wo.Destroy()
	wo.SetSync(true)
	if err := s.write(wo, batch); err != nil {
		return fmt.Errorf("storage: rekey write: %w", err)
	}
	s.keys = next
	return nil
}

// replaceBytesField returns msg with every occurrence of field num replaced
// by one length-delimited field holding val, every other field (known or
// not) copied as it was.
func replaceBytesField(msg []byte, num protowire.Number, val []byte) ([]byte, error) {
	out := make([]byte, 0, len(msg)+len(val))
	for b := msg; len(b) > 0; {
		n, typ, tagLen := protowire.ConsumeTag(b)
		if tagLen < 0 {
			return nil, protowire.ParseError(tagLen)
		}
		valLen := protowire.ConsumeFieldValue(n, typ, b[tagLen:])
		if valLen < 0 {
			return nil, protowire.ParseError(valLen)
		}
		if n != num {
			out = append(out, b[:tagLen+valLen]...)
		} else if typ != protowire.BytesType {
			return nil, errors.New("field to replace is not length-delimited")
		}
		b = b[tagLen+valLen:]
	}
	out = protowire.AppendTag(out, num, protowire.BytesType)
	return protowire.AppendBytes(out, val), nil
}
