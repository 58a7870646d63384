package certs

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/singularity-ng/singularity-edge/storage"
)

// ReplicationWaiter waits until every alive member of the cluster has
// applied a commit (the cluster's wait-for-all write). It returns an error
// naming the members still missing when ctx ends first.
type ReplicationWaiter interface {
	WaitReplicated(ctx context.Context, commit storage.Commit) error
}

// StoreBackend keeps the ACME manager's shared state in the store's acme
// table: accounts (key sealed), challenge tokens (TTL rows), leases,
// renewal state and budget events (TTL rows). It implements AccountStore,
// ChallengeStore, RenewalStore and Counters.
type StoreBackend struct {
	store *storage.Store
	wait  ReplicationWaiter
	now   func() time.Time
}

// NewStoreBackend returns the backend over store. wait is the cluster's
// wait-for-all; nil means this agent is the whole cluster, and a commit
// (durable before Update returns) is then held by every member.
func NewStoreBackend(store *storage.Store, wait ReplicationWaiter) *StoreBackend {
	return &StoreBackend{store: store, wait: wait, now: time.Now}
}

// Keys of the acme table, by kind.
const (
	keyAccount   = "account/"
	keyChallenge = "challenge/"
	keyLease     = "lease/"
	keyState     = "state/"
	keyEvent     = "event/"
	keyDue       = "due/"
)

// dueKey orders due rows by time: 20 digits of Unix nanoseconds, then the
// certificate id.
func dueKey(d DueCertificate) string {
	return fmt.Sprintf("%s%020d/%s", keyDue, d.At.UnixNano(), d.ID)
}

// dueEnd is the first key after every due row at or before t.
func dueEnd(t time.Time) string {
	if t.After(maxNanoTime) {
		return keyDue + "~"
	}
	return fmt.Sprintf("%s%020d/~", keyDue, t.UnixNano())
}

var maxNanoTime = time.Unix(0, 1<<63-1)

// parseDueKey accepts only what dueKey writes. DropDue deletes dueKey(d),
// so a row spelt otherwise ("5" or "+5" for 20 digits) would never go,
// and a shorter one would sort out of time order.
func parseDueKey(key string) (DueCertificate, error) {
	rest, prefixed := strings.CutPrefix(key, keyDue)
	ts, id, ok := strings.Cut(rest, "/")
	n, err := strconv.ParseInt(ts, 10, 64)
	d := DueCertificate{ID: id, At: time.Unix(0, n).UTC()}
	if !prefixed || !ok || err != nil || id == "" || dueKey(d) != key {
		return DueCertificate{}, fmt.Errorf("certs: malformed due row %q", key)
	}
	return d, nil
}

func putJSON(tx *storage.Tx, key string, v any, secret string, expires time.Time) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.PutACMERecord(&storage.ACMERecord{Key: key, Data: data, Secret: secret, ExpiresAt: expires})
}

// LoadAccount implements AccountStore.
func (b *StoreBackend) LoadAccount(ctx context.Context, directory string) (Account, error) {
	r, err := b.store.GetACMERecord(ctx, keyAccount+directory)
	if errors.Is(err, storage.ErrNotFound) {
		return Account{}, fmt.Errorf("%w: %s", ErrNoAccount, directory)
	}
	if err != nil {
		return Account{}, err
	}
	return decodeAccount(r)
}

func decodeAccount(r storage.ACMERecord) (Account, error) {
	var a Account
	if err := json.Unmarshal(r.Data, &a); err != nil {
		return Account{}, fmt.Errorf("certs: stored acme account %s: %w", r.Key, err)
	}
	a.KeyPEM = r.Secret
	return a, nil
}

// SaveAccount implements AccountStore: the first account stored for a
// directory wins.
func (b *StoreBackend) SaveAccount(ctx context.Context, a Account) (Account, error) {
	var out Account
	_, err := b.store.Update(ctx, func(tx *storage.Tx) error {
		r, err := tx.ACMERecord(keyAccount + a.Directory)
		if err == nil {
			out, err = decodeAccount(r)
			return err
		}
		if !errors.Is(err, storage.ErrNotFound) {
			return err
		}
		out = a
		return putJSON(tx, keyAccount+a.Directory, a, a.KeyPEM, time.Time{})
	})
	return out, err
}

// DropAccount implements AccountStore.
func (b *StoreBackend) DropAccount(ctx context.Context, directory, uri string) error {
	_, err := b.store.Update(ctx, func(tx *storage.Tx) error {
		r, err := tx.ACMERecord(keyAccount + directory)
		if errors.Is(err, storage.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		cur, err := decodeAccount(r)
		if err != nil {
			return err
		}
		if cur.URI != uri {
			return nil // another agent registered a new one already
		}
		return tx.DeleteACMERecord(keyAccount + directory)
	})
	return err
}

func challengeKey(typ, name string) string { return keyChallenge + typ + "/" + name }

// PresentChallenge implements ChallengeStore: the token is committed as a
// TTL row, then held until every alive member has applied it.
func (b *StoreBackend) PresentChallenge(ctx context.Context, c ChallengeToken) error {
	commit, err := b.store.Update(ctx, func(tx *storage.Tx) error {
		return putJSON(tx, challengeKey(c.Type, c.ChallengeName()), c, "", c.ExpiresAt)
	})
	if err != nil {
		return err
	}
	if b.wait == nil {
		return nil
	}
	return b.wait.WaitReplicated(ctx, commit)
}

// RemoveChallenge implements ChallengeStore.
func (b *StoreBackend) RemoveChallenge(ctx context.Context, c ChallengeToken) error {
	_, err := b.store.Update(ctx, func(tx *storage.Tx) error {
		err := tx.DeleteACMERecord(challengeKey(c.Type, c.ChallengeName()))
		if errors.Is(err, storage.ErrNotFound) {
			return nil
		}
		return err
	})
	return err
}

// Certificate implements RenewalStore.
func (b *StoreBackend) Certificate(ctx context.Context, id string) (storage.Certificate, error) {
	return b.store.GetCertificate(ctx, id)
}

// CertificatesExpiringBefore reads and decrypts every certificate
// expiring before t (what the scheduler read on each pass before it had
// due rows; kept for comparison in the benchmark).
func (b *StoreBackend) CertificatesExpiringBefore(ctx context.Context, t time.Time, limit int) ([]storage.Certificate, error) {
	return b.store.CertificatesExpiringBefore(ctx, t, limit)
}

// CertificateExpiries implements RenewalStore.
func (b *StoreBackend) CertificateExpiries(ctx context.Context, t time.Time, limit int) ([]storage.CertificateExpiry, error) {
	return b.store.CertificateExpiries(ctx, t, limit)
}

// DueCertificates implements RenewalStore: one range read of the due
// rows in key (time) order, ending before the first row after until.
func (b *StoreBackend) DueCertificates(ctx context.Context, until time.Time, limit int) ([]DueCertificate, error) {
	out, _, err := b.DueRows(ctx, until, limit)
	return out, err
}

// DueRows is DueCertificates that also returns the keys of the rows it
// left out. It implements DueRowReader.
func (b *StoreBackend) DueRows(ctx context.Context, until time.Time, limit int) (due []DueCertificate, malformed []string, err error) {
	recs, err := b.store.ListACMERecordsBefore(ctx, keyDue, "", dueEnd(until), limit)
	if err != nil {
		return nil, nil, err
	}
	due = make([]DueCertificate, 0, len(recs))
	for _, r := range recs {
		d, err := parseDueKey(r.Key)
		if err != nil {
			// A row dueKey did not write (an import, another build) is
			// left out rather than failing the read: it stopped every
			// renewal pass, for every certificate. A certificate it was
			// meant for gets a row of its own at the next reconciliation.
			malformed = append(malformed, r.Key)
			continue
		}
		due = append(due, d)
	}
	return due, malformed, nil
}

// AddDue implements RenewalStore.
func (b *StoreBackend) AddDue(ctx context.Context, d DueCertificate) error {
	_, err := b.store.Update(ctx, func(tx *storage.Tx) error {
		return putJSON(tx, dueKey(d), d.ID, "", time.Time{})
	})
	return err
}

// DropDue implements RenewalStore.
func (b *StoreBackend) DropDue(ctx context.Context, d DueCertificate) error {
	_, err := b.store.Update(ctx, func(tx *storage.Tx) error {
		if err := tx.DeleteACMERecord(dueKey(d)); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return err
		}
		return nil
	})
	return err
}

// writeState writes st and moves its due row, in tx. A stored state that
// does not decode is replaced: only an operator's renewal or order gets
// here with one (every other write reads the state first and stops), and
// its due row, which cannot be known, is dropped when read (not its
// state's).
func writeState(tx *storage.Tx, st RenewalState) error {
	old, err := readState(tx, st.CertificateID)
	if errors.Is(err, ErrUnreadableState) {
		old, err = RenewalState{}, nil
	}
	if err != nil {
		return err
	}
	if !old.Due.IsZero() && !old.Due.Equal(st.Due) {
		err := tx.DeleteACMERecord(dueKey(DueCertificate{ID: st.CertificateID, At: old.Due}))
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			return err
		}
	}
	if !st.Due.IsZero() {
		d := DueCertificate{ID: st.CertificateID, At: st.Due}
		if err := putJSON(tx, dueKey(d), d.ID, "", time.Time{}); err != nil {
			return err
		}
	}
	return putJSON(tx, keyState+st.CertificateID, st, "", time.Time{})
}

func readState(tx *storage.Tx, id string) (RenewalState, error) {
	r, err := tx.ACMERecord(keyState + id)
	if errors.Is(err, storage.ErrNotFound) {
		return RenewalState{CertificateID: id}, nil
	}
	if err != nil {
		return RenewalState{}, err
	}
	var st RenewalState
	if err := json.Unmarshal(r.Data, &st); err != nil {
		return RenewalState{}, fmt.Errorf("%w: row %s%s: %w", ErrUnreadableState, keyState, id, err)
	}
	st.CertificateID = id
	return st, nil
}

// RenewalState implements RenewalStore.
func (b *StoreBackend) RenewalState(ctx context.Context, id string) (st RenewalState, err error) {
	err = b.store.View(ctx, func(tx *storage.Tx) error { st, err = readState(tx, id); return err })
	return st, err
}

// SaveRenewalState implements RenewalStore.
func (b *StoreBackend) SaveRenewalState(ctx context.Context, st RenewalState) error {
	_, err := b.store.Update(ctx, func(tx *storage.Tx) error { return writeState(tx, st) })
	return err
}

// RemoveCertificate implements RenewalStore.
func (b *StoreBackend) RemoveCertificate(ctx context.Context, id, fingerprint string) error {
	_, err := b.store.Update(ctx, func(tx *storage.Tx) error {
		c, err := tx.Certificate(id)
		if errors.Is(err, storage.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if c.Fingerprint != fingerprint {
			return nil // renewed or replaced since the decision
		}
		if err := DeleteRenewalState(tx, id, b.now()); err != nil {
			return err
		}
		return tx.DeleteCertificate(id)
	})
	return err
}

// DeleteRenewalState deletes certificate id's renewal state and due row
// in tx, and ends its lease at now (the row stays, with a higher epoch,
// since epochs only grow). The admin API calls it with the certificate's
// delete: an order of the same names afterwards starts afresh (without
// it, the deleted certificate's profile, failures and backoff were
// inherited), and a renewal in flight finds its lease lost and stores
// nothing (without it, the deleted certificate came back when the
// renewal completed, and renewed itself from then on).
func DeleteRenewalState(tx *storage.Tx, id string, now time.Time) error {
	l, ok, err := readLease(tx, leaseKey(id))
	if err != nil {
		return err
	}
	if ok {
		ended := Lease{Key: l.Key, Epoch: l.Epoch + 1, Expires: now.UTC()}
		if err := putJSON(tx, keyLease+l.Key, ended, "", time.Time{}); err != nil {
			return err
		}
	}
	st, err := readState(tx, id)
	if errors.Is(err, ErrUnreadableState) {
		// Deleted with its certificate all the same: an operator who
		// deletes the certificate asks for it, and could not otherwise.
		// Its due row, which cannot be known, is dropped when read.
		st, err = RenewalState{}, nil
	}
	if err != nil {
		return err
	}
	if !st.Due.IsZero() {
		err := tx.DeleteACMERecord(dueKey(DueCertificate{ID: id, At: st.Due}))
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			return err
		}
	}
	if err := tx.DeleteACMERecord(keyState + id); err != nil && !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	return nil
}

func readLease(tx *storage.Tx, key string) (Lease, bool, error) {
	r, err := tx.ACMERecord(keyLease + key)
	if errors.Is(err, storage.ErrNotFound) {
		return Lease{}, false, nil
	}
	if err != nil {
		return Lease{}, false, err
	}
	var l Lease
	if err := json.Unmarshal(r.Data, &l); err != nil {
		return Lease{}, false, fmt.Errorf("certs: stored lease %s: %w", key, err)
	}
	return l, true, nil
}

// StoreCertificate implements RenewalStore. The lease check and both
// writes are one transaction: a concurrent take-over of the lease makes it
// conflict and re-check.
func (b *StoreBackend) StoreCertificate(ctx context.Context, cert *storage.Certificate, st RenewalState, lease Lease) error {
	_, err := b.store.Update(ctx, func(tx *storage.Tx) error {
		cur, ok, err := readLease(tx, lease.Key)
		if err != nil {
			return err
		}
		if !ok || cur.Holder != lease.Holder || cur.Epoch != lease.Epoch || !b.now().Before(cur.Expires) {
			return fmt.Errorf("%w: %s (held by %q epoch %d)", ErrLeaseLost, lease.Key, cur.Holder, cur.Epoch)
		}
		if err := tx.PutCertificate(cert); err != nil {
			return err
		}
		return writeState(tx, st)
	})
	return err
}

// AcquireLease implements RenewalStore. Lease rows have no TTL: the epoch
// must keep growing for the life of the certificate.
func (b *StoreBackend) AcquireLease(ctx context.Context, key, holder string, ttl time.Duration) (Lease, error) {
	var out Lease
	_, err := b.store.Update(ctx, func(tx *storage.Tx) error {
		now := b.now()
		cur, ok, err := readLease(tx, key)
		if err != nil {
			return err
		}
		out = Lease{Key: key, Holder: holder, Epoch: 1, Expires: now.Add(ttl).UTC()}
		if ok {
			live := now.Before(cur.Expires)
			switch {
			case live && cur.Holder != holder:
				return fmt.Errorf("%w: %s held by %s until %s", ErrLeaseHeld, key, cur.Holder, cur.Expires.Format(time.RFC3339))
			case live:
				out.Epoch = cur.Epoch
			default:
				out.Epoch = cur.Epoch + 1
			}
		}
		return putJSON(tx, keyLease+key, out, "", time.Time{})
	})
	return out, err
}

// ExtendLease implements RenewalStore.
func (b *StoreBackend) ExtendLease(ctx context.Context, l Lease, ttl time.Duration) (Lease, error) {
	var out Lease
	_, err := b.store.Update(ctx, func(tx *storage.Tx) error {
		now := b.now()
		cur, ok, err := readLease(tx, l.Key)
		if err != nil {
			return err
		}
		if !ok || cur.Holder != l.Holder || cur.Epoch != l.Epoch || !now.Before(cur.Expires) {
			return fmt.Errorf("%w: %s (held by %q epoch %d until %s)", ErrLeaseLost, l.Key, cur.Holder, cur.Epoch, cur.Expires.Format(time.RFC3339))
		}
		out = cur
		out.Expires = now.Add(ttl).UTC()
		return putJSON(tx, keyLease+l.Key, out, "", time.Time{})
	})
	return out, err
}

// ReleaseLease implements RenewalStore: the row stays, expired, so the
// next holder's epoch is higher.
func (b *StoreBackend) ReleaseLease(ctx context.Context, l Lease) error {
	_, err := b.store.Update(ctx, func(tx *storage.Tx) error {
		cur, ok, err := readLease(tx, l.Key)
		if err != nil {
			return err
		}
		if !ok || cur.Holder != l.Holder || cur.Epoch != l.Epoch {
			return ErrLeaseLost
		}
		cur.Expires = b.now().UTC()
		return putJSON(tx, keyLease+l.Key, cur, "", time.Time{})
	})
	return err
}

// eventPrefix keeps scopes of any shape (URLs hold slashes) out of the
// key's structure.
func eventPrefix(kind, scope string) string {
	h := sha256.Sum256([]byte(scope))
	return keyEvent + kind + "/" + hex.EncodeToString(h[:8]) + "/"
}

// AddBudgetEvents implements Counters.
func (b *StoreBackend) AddBudgetEvents(ctx context.Context, events []BudgetEvent) error {
	_, err := b.store.Update(ctx, func(tx *storage.Tx) error {
		for _, e := range events {
			var n [6]byte
			if _, err := rand.Read(n[:]); err != nil {
				return err
			}
			key := fmt.Sprintf("%s%020d/%s/%x", eventPrefix(e.Kind, e.Scope), e.At.UnixNano(), e.Node, n)
			if err := putJSON(tx, key, e, "", e.Expires); err != nil {
				return err
			}
		}
		return nil
	})
	return err
}

// BudgetEvents implements Counters.
func (b *StoreBackend) BudgetEvents(ctx context.Context, kind, scope string, since time.Time) ([]time.Time, error) {
	prefix := eventPrefix(kind, scope)
	recs, err := b.store.ListACMERecords(ctx, prefix, fmt.Sprintf("%s%020d", prefix, since.UnixNano()), 0)
	if err != nil {
		return nil, err
	}
	out := make([]time.Time, 0, len(recs))
	for _, r := range recs {
		var e BudgetEvent
		if err := json.Unmarshal(r.Data, &e); err != nil {
			return nil, fmt.Errorf("certs: stored budget event %s: %w", r.Key, err)
		}
		if !e.At.Before(since) {
			out = append(out, e.At)
		}
	}
	return out, nil
}

// DropBudgetEvents implements Counters.
func (b *StoreBackend) DropBudgetEvents(ctx context.Context, kind, scope string) (int, error) {
	prefix := eventPrefix(kind, scope)
	n := 0
	_, err := b.store.Update(ctx, func(tx *storage.Tx) error {
		recs, err := tx.ACMERecords(prefix, "", 0)
		if err != nil {
			return err
		}
		for _, r := range recs {
			if err := tx.DeleteACMERecord(r.Key); err != nil {
				return err
			}
		}
		n = len(recs)
		return nil
	})
	return n, err
}

// PurgeExpired deletes expired challenge tokens and budget events.
func (b *StoreBackend) PurgeExpired(ctx context.Context) (int, error) {
	return b.store.PurgeExpiredACME(ctx, b.now(), 0)
}

// Interface checks: the agent wires one StoreBackend into all of these.
var (
	_ AccountStore   = (*StoreBackend)(nil)
	_ ChallengeStore = (*StoreBackend)(nil)
	_ RenewalStore   = (*StoreBackend)(nil)
	_ Counters       = (*StoreBackend)(nil)
)
